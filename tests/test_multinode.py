"""Several machines: torchrun's multi-node launchers (params and DVC's -S), the
one-line error when a peer is lost, and two torchrun agents on loopback, each in
its own copy of the project as two machines would be (docs/more-machines.md)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import env_for, make_project, run, tiny_text
from gptpipe import params
from gptpipe.distributed import World, lost_contact
from gptpipe.errors import UserError
from gptpipe.launcher import relaunch_argv

C10D = ("torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d "
        "--rdzv-endpoint=HOST:29500")
STATIC = ("torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0 "
          "--master_addr=10.0.0.1 --master_port=29500")


@pytest.mark.parametrize("launcher", [
    "python", "torchrun --nproc_per_node=2", "torchrun --standalone --nproc_per_node=2",
    C10D, STATIC, "torchrun --nnodes 2 --nproc-per-node 1 --master-addr h --master-port 1"])
def test_multi_node_launchers_are_accepted(launcher):
    assert params.from_dict({"train": {"launcher": launcher}}).train.launcher == launcher


def test_the_train_stage_restarts_under_torchrun_once(monkeypatch):
    """dvc.yaml runs `python stages/train.py`; a torchrun launcher has the stage
    exec torchrun (this interpreter's) with its flags, and the workers it starts
    (LOCAL_RANK set) train instead of starting torchrun again."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert relaunch_argv("python", "stages/train.py") is None
    assert relaunch_argv(STATIC, "stages/train.py") == [
        sys.executable, "-m", "torch.distributed.run", *STATIC.split()[1:], "stages/train.py"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch_argv(STATIC, "stages/train.py") is None


@pytest.mark.parametrize("launcher, needle", [
    ("torchrun --nnodes=2 --nproc_per_node=1", "needs the address of node 0"),
    ("torchrun --standalone --nnodes=2 --rdzv-endpoint=h:1", "--standalone is one machine"),
    ("torchrun --nnodes=two --rdzv-endpoint=h:1", "--nnodes must be N or MIN:MAX"),
    ("bash -c 'python stages/train.py'", "must be 'python' or 'torchrun"),
])
def test_a_launcher_that_cannot_work_is_one_line_naming_the_key(launcher, needle):
    with pytest.raises(UserError, match="train.launcher") as caught:
        params.from_dict({"train": {"launcher": launcher}})
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("launcher", [C10D, STATIC, "torchrun --nproc_per_node=2"])
def test_the_documented_dvc_set_param_reaches_params_yaml(tmp_path, launcher):
    """`dvc exp run -S "train.launcher='...'"` as docs/more-machines.md writes it: DVC
    parses -S with Hydra's grammar, which refuses a second `=` outside quotes."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    from projects import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", [f"train.launcher='{launcher}'"])
    assert params.load(tmp_path / "params.yaml").train.launcher == launcher
    with pytest.raises(InvalidArgumentError):  # why the docs quote the value twice
        apply_overrides(tmp_path / "params.yaml", [f"train.launcher={launcher}"])
    docs = (ROOT / "docs" / "more-machines.md").read_text(encoding="utf-8")
    assert f"-S \"train.launcher='{C10D.replace('HOST', 'node0.example')}'\"" in docs


def test_a_lost_peer_is_one_line_naming_it():
    world = World(rank=0, size=2, hosts=("node0", "node1"))
    with pytest.raises(UserError) as caught:
        with lost_contact(world, lambda: "rerun resumes from step 10"):
            raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
                               "Connection closed by peer [127.0.0.1]:48311. This is "
                               "typically caused by a remote worker\nmore")
    message = str(caught.value)
    assert message.startswith("lost contact with another training process (rank 1 on node1)")
    assert "Connection closed by peer [127.0.0.1]:48311" in message
    assert "pair.cc" not in message and "typically" not in message and "\n" not in message
    assert message.endswith("rerun resumes from step 10")
    with pytest.raises(ValueError):  # anything else stays what it is
        with lost_contact(world):
            raise ValueError("not a peer")


# -- two agents on loopback --------------------------------------------------------

# 1 thread per process: two processes fit the two cores. 240 steps of a tiny model,
# a checkpoint every 10: the kill lands long before the end.
PARAMS = {"train": {"threads": 1, "max_iters": 240, "eval_interval": 80,
                    "checkpoint_interval": 10, "warmup_iters": 10}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agent(project: Path, node_rank: int, port: int, mlflow_db: Path) -> subprocess.Popen:
    """One node's torchrun (static rendezvous on loopback); the worker's stdout and
    stderr go to files under project/torchrun-logs (--redirects 3)."""
    logs = project / "torchrun-logs"
    shutil.rmtree(logs, ignore_errors=True)
    env = env_for(project, GPTPIPE_DIST_TIMEOUT="30", OMP_NUM_THREADS="1")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_db}"
    cmd = ["torchrun", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}",
           "--master_addr=127.0.0.1", f"--master_port={port}", f"--log-dir={logs}",
           "--redirects=3", "stages/train.py"]
    return subprocess.Popen(cmd, cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _worker_log(project: Path, name: str) -> str:
    found = sorted((project / "torchrun-logs").rglob(f"0/{name}.log"))
    return found[-1].read_text(encoding="utf-8", errors="replace") if found else ""


def _both(projects: list[Path], mlflow_db: Path, timeout: float = 120):
    """Both nodes' agents, to the end: [(returncode, agent stderr)] by node rank."""
    port = _free_port()
    agents = [_agent(p, rank, port, mlflow_db) for rank, p in enumerate(projects)]
    try:
        outs = [a.communicate(timeout=timeout) for a in agents]
    finally:
        for a in agents:
            _kill_tree(a.pid)
            a.wait(timeout=30)
    return [(a.returncode, err) for a, (_, err) in zip(agents, outs)]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL an agent and its workers (torchrun starts each in a session of its
    own, so the agent's process group alone would leave the worker training)."""
    for victim in [pid, *_descendants(pid)]:
        for kill in (os.killpg, os.kill):
            try:
                kill(victim, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _weights(project: Path) -> dict[str, bytes]:
    import torch

    payload = torch.load(project / "models" / "model.pt", weights_only=True)
    return {k: v.numpy().tobytes() for k, v in payload["state_dict"].items()}


def _runs(mlflow_db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    experiment = client.get_experiment_by_name("gptpipe")
    return client, client.search_runs([experiment.experiment_id])


def _assert_rank_0_alone_wrote(node0: Path, node1: Path) -> None:
    for out in ("models/model.pt", "reports/train.json", "reports/mlflow_run.json",
                "reports/loss_curve.png"):
        assert (node0 / out).exists(), out
        assert not (node1 / out).exists(), f"rank 1 wrote {out}"
    assert not (node1 / "mlflow.db").exists(), "rank 1 talked to MLflow"
    assert not list((node1 / ".gptpipe").glob("checkpoints/*/*")), "rank 1 checkpointed"


@pytest.mark.slow
def test_two_nodes_on_loopback_train_resume_and_match_one_node(tmp_path):
    started = time.monotonic()
    template = make_project(tmp_path / "template", corpus=tiny_text(), overrides=PARAMS)
    run(["dvc", "repro", "split"], template)  # every node has the same data (dvc pull)
    copy = lambda name: Path(shutil.copytree(template, tmp_path / name, symlinks=True))  # noqa: E731

    # One node, two processes: the reference weights.
    single = copy("single")
    run(["torchrun", "--standalone", "--nproc_per_node=2", "stages/train.py"], single,
        env=env_for(single, OMP_NUM_THREADS="1"))
    reference = _weights(single)

    # Two nodes, one process each: one MLflow run, rank 0's outputs only, same bytes.
    node0, node1 = copy("node0"), copy("node1")
    db = node0 / "mlflow.db"
    results = _both([node0, node1], db)
    assert [code for code, _ in results] == [0, 0], results
    assert "weights identical on all 2 ranks" in _worker_log(node0, "stdout")
    _assert_rank_0_alone_wrote(node0, node1)
    client, runs = _runs(db)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _weights(node0) == reference

    # Node 1 dies after the first checkpoint: node 0 stops with one line, then both
    # rerun and resume from node 0's last checkpoint.
    node0, node1 = copy("kill0"), copy("kill1")
    db = node0 / "mlflow.db"
    port = _free_port()
    agents = [_agent(p, rank, port, db) for rank, p in enumerate((node0, node1))]
    try:
        deadline = time.monotonic() + 120
        checkpoints = node0 / ".gptpipe" / "checkpoints"
        while not list(checkpoints.glob("*/checkpoint.pt")):
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            assert agents[0].poll() is None, agents[0].communicate()
            time.sleep(0.05)
        _kill_tree(agents[1].pid)
        killed_at = time.monotonic()
        _, agent_err = agents[0].communicate(timeout=90)
        lost_after = time.monotonic() - killed_at
    finally:
        for agent in agents:
            _kill_tree(agent.pid)
            agent.wait(timeout=30)
    assert agents[0].returncode != 0
    assert lost_after < 60, f"node 0 took {lost_after:.0f} s to notice"
    worker_err = _worker_log(node0, "stderr")
    errors = [line for line in worker_err.splitlines() if "train: error:" in line]
    assert len(errors) == 1, worker_err
    assert errors[0].startswith("train: error: lost contact with another training process "
                                "(rank 1 on "), errors[0]
    assert "resumes from the last checkpoint, step " in errors[0], errors[0]
    assert "Traceback" not in worker_err, worker_err
    import torch

    [ckpt] = list(checkpoints.glob("*/checkpoint.pt"))
    saved = torch.load(ckpt, weights_only=True)["trainer"]["step"]
    assert errors[0].endswith(f"step {saved}"), (errors[0], saved)
    assert 10 <= saved < PARAMS["train"]["max_iters"]
    client, runs = _runs(db)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"

    results = _both([node0, node1], db)
    assert [code for code, _ in results] == [0, 0], results
    assert f"train: resuming from step {saved} " in _worker_log(node0, "stdout")
    _assert_rank_0_alone_wrote(node0, node1)
    client, runs = _runs(db)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run, resumed
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id,
                                                            "batch_loss")) == \
        list(range(1, PARAMS["train"]["max_iters"] + 1))
    assert _weights(node0) == reference  # the exact resume: the same bytes
    assert time.monotonic() - started < 240
