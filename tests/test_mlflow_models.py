"""The trained model as an MLflow model: logged from code (no pickle), linked to
its run, registered as a version, promoted to `champion` by evaluate, loaded by
name (`gptpipe sample --model runs:/... | models:/...`) and served by a real
`mlflow models serve`. A real sqlite store and real processes throughout."""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

import gptpipe
from helpers import BIN, env_for, make_project, run, run_id_of, tiny_text
from servers import _stop_group
from test_mlflow_server import free_port

PROMPT, SEED, N_NEW = "ROMEO:", 7, 40
SAMPLE_FLAGS = ["--prompt", PROMPT, "--seed", str(SEED), "--max-new-tokens", str(N_NEW),
                "--temperature", "0.8", "--top-k", "0", "--top-p", "1.0"]
PREDICT_PARAMS = {"max_new_tokens": N_NEW, "seed": SEED, "temperature": 0.8, "top_k": 0,
                  "top_p": 1.0}
SERVE_TIMEOUT_S = 240  # start-up on 2 busy cores; fail, never hang, past this

# Loads the model in a fresh interpreter with every pickle entry point replaced by
# a tripwire, predicts, and prints the texts as JSON.
LOAD_WITHOUT_PICKLE = """
import json, pickle, sys
import cloudpickle, torch

def tripwire(*args, **kwargs):
    raise AssertionError("unpickling attempted")

for module in (pickle, cloudpickle):
    module.load = module.loads = tripwire
pickle.Unpickler = tripwire
real_torch_load = torch.load
def safe_torch_load(*args, **kwargs):
    if kwargs.get("weights_only") is not True:
        raise AssertionError("torch.load without weights_only=True")
    return real_torch_load(*args, **kwargs)
torch.load = safe_torch_load
try:  # the tripwires are live
    pickle.loads(pickle.dumps(1))
    raise SystemExit("tripwire not armed")
except AssertionError:
    pass

import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
texts = model.predict(pd.DataFrame({"prompt": sys.argv[3:]}), params=json.loads(sys.argv[2]))
print(json.dumps(texts))
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny pipeline run with mlflow.log_model on (the other tests turn it off)."""
    project = make_project(tmp_path_factory.mktemp("models") / "proj",
                           {"mlflow": {"log_model": True}}, corpus=tiny_text())
    result = run(["dvc", "repro"], project)
    assert "registered as models:/gptpipe/1" in result.stdout, result.stdout
    assert "evaluate: champion -> gptpipe v1" in result.stdout, result.stdout
    return project


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def _predict(project: Path, uri: str, *prompts: str) -> list[str]:
    result = run([sys.executable, "-c", LOAD_WITHOUT_PICKLE, uri, json.dumps(PREDICT_PARAMS),
                  *prompts], project)
    return json.loads(result.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=None)
def _sample(project: Path, model: str) -> str:
    """`gptpipe sample` of PROMPT with SEED (cached: each call costs a process start)."""
    return run(["gptpipe", "sample", "--model", model, *SAMPLE_FLAGS], project).stdout


@pytest.mark.slow
def test_train_logs_a_registered_model_from_code_with_its_weights_and_tokenizer(trained):
    client, run_id = _client(trained), run_id_of(trained)
    # the run page's "Logged models": the run's output, created by this run
    outputs = client.get_run(run_id).outputs.model_outputs
    assert len(outputs) == 1
    logged = client.get_logged_model(outputs[0].model_id)
    assert logged.source_run_id == run_id and logged.name == "model"
    assert logged.status == LoggedModelStatus.READY
    # the registered version, its tags, and the champion alias evaluate set
    version = client.get_model_version_by_alias("gptpipe", "champion")
    assert str(version.version) == "1" and version.run_id == run_id
    metrics = json.loads((trained / "reports/metrics.json").read_text())
    run_tags = client.get_run(run_id).data.tags
    assert float(version.tags["val.bits_per_char"]) == metrics["val"]["bits_per_char"]
    assert version.tags["data.sha256.val.npy"] == _sha256(trained / "data/split/val.npy")
    assert version.tags["data.sha256.train.npy"] == _sha256(trained / "data/split/train.npy")
    assert version.tags["git.commit"] == run_tags["git.commit"] != "unknown"
    assert version.tags["dvc.exp_name"] == "(workspace)"
    # the model's files: code, not a pickle; the project's weights and tokenizer
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")  # runs:/ resolves with it
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/model", dst_path=str(trained / "dl")))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor and (folder / "model_code.py").is_file()
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle")]
    assert flavor["config"]["gptpipe_model_format"] == 1
    assert (folder / flavor["artifacts"]["weights"]["path"]).read_bytes() == \
        (trained / "models/model.pt").read_bytes()
    assert (folder / flavor["artifacts"]["tokenizer"]["path"]).read_bytes() == \
        (trained / "data/tokens/tokenizer.json").read_bytes()
    params = [p["name"] for p in json.loads(mlmodel["signature"]["params"])]
    assert params == ["max_new_tokens", "temperature", "top_k", "top_p", "seed"]
    assert json.loads(mlmodel["signature"]["inputs"])[0]["name"] == "prompt"
    assert (folder / mlmodel["saved_input_example_info"]["artifact_path"]).is_file()
    # and the tokenizer as a run artifact too
    assert "tokenizer/tokenizer.json" in [
        a.path for a in client.list_artifacts(run_id, "tokenizer")]


@pytest.mark.slow
def test_the_shipped_model_is_a_logged_model_at_its_step_with_evaluates_metrics(trained):
    """MLflow 3: the LoggedModel's step is the kept weights' (train.json), its metrics are
    that step's val_loss and evaluate's, each on its dataset, so the Models tab and
    search_logged_models rank models by val bits/char; descriptions on the registry."""
    client, run_id = _client(trained), run_id_of(trained)
    ref = json.loads((trained / "reports/mlflow_run.json").read_text())
    (output,) = client.get_run(run_id).outputs.model_outputs
    train = json.loads((trained / "reports/train.json").read_text())
    assert output.model_id == ref["model_id"]
    assert output.step == train.get("kept_step", train["steps"])
    model = client.get_logged_model(ref["model_id"])
    metrics = {(m.key, m.dataset_name): m for m in model.metrics}
    evaluated = json.loads((trained / "reports/metrics.json").read_text())
    val_digest = _sha256(trained / "data/split/val.npy")[:12]
    assert metrics["val.bits_per_char", "val"].value == evaluated["val"]["bits_per_char"]
    assert metrics["val.bits_per_char", "val"].dataset_digest == val_digest
    assert metrics["train.loss", "train"].value == evaluated["train"]["loss"]
    assert metrics["val_loss", None].step == output.step
    found = client.search_logged_models(
        experiment_ids=[model.experiment_id],
        order_by=[{"field_name": "metrics.val.bits_per_char", "ascending": True}])
    assert [m.model_id for m in found] == [ref["model_id"]]
    version = client.get_model_version("gptpipe", "1")
    note = client.get_run(run_id).data.tags["mlflow.note.content"]
    assert version.description == note and "**val bits/char**" in note
    assert "**Sample**" in note and "**Weights**: step" in note
    assert client.get_registered_model("gptpipe").description


@pytest.mark.slow
def test_the_model_loads_without_unpickling_and_matches_gptpipe_sample(trained, monkeypatch,
                                                                      capsys):
    run_id = run_id_of(trained)
    texts = _predict(trained, f"runs:/{run_id}/model", PROMPT, "\n")
    assert len(texts) == 2 and len(texts[0]) >= N_NEW // 2 and texts[0] != texts[1]
    expected = PROMPT + texts[0] + "\n"
    assert _sample(trained, "models/model.pt") == expected  # the installed command
    for model in (f"runs:/{run_id}/model", "models:/gptpipe@champion", "models:/gptpipe/1"):
        code, out, err = _sample_in_process(trained, model, monkeypatch, capsys,
                                            flags=tuple(SAMPLE_FLAGS))
        assert (code, out) == (0, expected), (model, err)


def _sample_in_process(project: Path, model: str, monkeypatch, capsys,
                       tracking_uri: str | None = None,
                       flags: tuple[str, ...] = ("--max-new-tokens", "5")) -> tuple[int, str, str]:
    """The real `gptpipe sample` entry point, run in this process (a process start
    costs ~10 s here): exit code, stdout, stderr."""
    from gptpipe.cli import main

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI",
                       tracking_uri or f"sqlite:///{project / 'mlflow.db'}")
    capsys.readouterr()
    try:
        main(["sample", "--model", model, *flags])
        code = 0
    except SystemExit as exc:  # run_main exits on errors only
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_bad_model_references_fail_with_one_line_naming_what_is_missing(trained, monkeypatch,
                                                                        capsys):
    client = _client(trained)
    bare = client.create_run(client.get_experiment_by_name("gptpipe").experiment_id).info.run_id
    client.set_terminated(bare)
    down = f"http://127.0.0.1:{free_port()}"
    cases = [
        ("models:/nope@champion", None, "no registered model 'nope'"),
        ("models:/gptpipe@nope", None, "has no alias 'nope' (aliases: champion)"),
        ("models:/gptpipe/99", None, "has no version '99'"),
        (f"runs:/{bare}/model", None, "run has no logged model 'model'"),
        ("runs:/0123abc/model", None, "no run '0123abc'"),
        ("models:/gptpipe@champion", down, "is unreachable"),
    ]
    for uri, tracking_uri, needle in cases:
        code, out, err = _sample_in_process(trained, uri, monkeypatch, capsys, tracking_uri)
        lines = err.strip().splitlines()
        assert code != 0 and out == "", (uri, code, out, err)
        assert len(lines) == 1 and lines[0].startswith(f"gptpipe: error: {uri}: "), lines
        assert needle in lines[0], lines
    # and through the installed command, once
    result = run(["gptpipe", "sample", "--model", "models:/gptpipe@nope"], trained, check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr == ("gptpipe: error: models:/gptpipe@nope: registered model 'gptpipe' "
                             "has no alias 'nope' (aliases: champion)\n")


@pytest.mark.slow
def test_a_model_of_another_format_names_the_gptpipe_version_it_needs(trained, monkeypatch,
                                                                      capsys):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri="models:/gptpipe/1", dst_path=str(trained / "newer")))
    code, out, err = _sample_in_process(trained, str(folder), monkeypatch, capsys,
                                        flags=tuple(SAMPLE_FLAGS))
    assert (code, out) == (0, _sample(trained, "models/model.pt")), err  # a model folder
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["config"] = {"gptpipe_model_format": 2,
                                                       "gptpipe_version": "9.9.9"}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    code, out, err = _sample_in_process(trained, str(folder), monkeypatch, capsys)
    assert code != 0 and out == ""
    assert err.strip() == (
        f"gptpipe: error: {folder}: gptpipe model format 2 (logged by gptpipe 9.9.9); "
        f"this gptpipe {gptpipe.__version__} reads format 1: install gptpipe 9.9.9 to load it")
    loaded = run([sys.executable, "-c", LOAD_WITHOUT_PICKLE, str(folder), "{}", "\n"], trained,
                 check=False)
    assert loaded.returncode != 0 and "install gptpipe 9.9.9 to load it" in loaded.stderr
    # model code (it travels with the model) that needs what the installed gptpipe lacks
    code_file = folder / "model_code.py"
    code_file.write_text(code_file.read_text().replace(
        "from gptpipe.sampling import generate", "from gptpipe.sampling import generate_v9"))
    mlmodel["flavors"]["python_function"]["config"]["gptpipe_model_format"] = 1
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    loaded = run([sys.executable, "-c", LOAD_WITHOUT_PICKLE, str(folder), "{}", "\n"], trained,
                 check=False)
    assert loaded.returncode != 0
    assert "logged by gptpipe 9.9.9 (model format 1), which the installed gptpipe cannot " \
           "load (cannot import name 'generate_v9'" in loaded.stderr, loaded.stderr[-2000:]


@pytest.mark.slow
def test_a_run_logged_before_mlflow_models_still_loads_by_its_run_uri(trained, monkeypatch,
                                                                      capsys):
    """gptpipe 0.1.0 logged model.pt and the tokenizer as plain run artifacts."""
    client = _client(trained)
    old = client.create_run(client.get_experiment_by_name("gptpipe").experiment_id).info.run_id
    client.log_artifact(old, str(trained / "models/model.pt"), "model")
    client.log_artifact(old, str(trained / "data/tokens/tokenizer.json"), "tokenizer")
    client.set_terminated(old)
    code, out, err = _sample_in_process(trained, f"runs:/{old}/model", monkeypatch, capsys,
                                        flags=tuple(SAMPLE_FLAGS))
    assert (code, out) == (0, _sample(trained, "models/model.pt")), err


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_champions_text(trained, request):
    port = free_port()
    log = trained / "serve.log"
    env = env_for(trained, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", "models:/gptpipe@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=trained, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    request.addfinalizer(lambda: _stop_group(proc))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"server not up:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    response = requests.post(f"{url}/invocations", timeout=120, json={
        "dataframe_records": [{"prompt": PROMPT}], "params": PREDICT_PARAMS})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    # the same text as gptpipe sample (and so as a local predict) with the same seed
    assert len(served) == 1 and PROMPT + served[0] + "\n" == _sample(trained, "models/model.pt")
    _stop_group(proc)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)


def test_champion_is_the_best_version_on_the_val_data_evaluated_last(tmp_path):
    """The documented rule, on a real sqlite registry: versions are compared only
    with versions measured on the same val data (by sha256); ties keep the older."""
    from gptpipe.tracking.registry import VAL_SHA_TAG, promote
    from gptpipe.tracking.runs import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracker.client
    client.create_registered_model("gptpipe")
    source = (tmp_path / "model").as_uri()

    def trained_on(data: str) -> str:
        run_id = tracker.create_run("rule", None, {}, {})
        client.create_model_version("gptpipe", source, run_id=run_id,
                                    tags={VAL_SHA_TAG: data * 64})
        return run_id

    def evaluate(run_id: str, bits_per_char: float) -> str:
        promote(tracker, run_id, bits_per_char)
        return str(client.get_model_version_by_alias("gptpipe", "champion").version)

    v1, v2, v3, v4, v5, v6 = (trained_on(d) for d in "aaabab")
    assert evaluate(v1, 2.0) == "1"   # the first model is champion
    assert evaluate(v2, 2.5) == "1"   # worse on the same data: stays
    assert evaluate(v3, 1.5) == "3"   # better on the same data: moves
    assert evaluate(v4, 3.0) == "4"   # new val data: compared only with its own data
    assert evaluate(v5, 1.8) == "3"   # back on data a: the best there, not v5
    assert evaluate(v6, 3.0) == "4"   # a tie on data b keeps the older version
    assert evaluate(v6, 2.9) == "6"   # re-evaluated better (evaluate rerun): moves
    assert client.get_model_version("gptpipe", "6").tags["val.bits_per_char"] == "2.9"
    no_model = tracker.create_run("rule", None, {}, {})
    assert promote(tracker, no_model, 1.0) is None  # log_model off: no version, no change
    assert str(client.get_model_version_by_alias("gptpipe", "champion").version) == "6"


def test_champion_right_when_parallel_evaluates_interleave(tmp_path):
    """On a shared server no lock spans the evaluates: one that read the scores before
    a rival's tag sets the alias after the rival did. Simulated here: right after
    promote moves the alias, a stale evaluate moves it back to the worse version.
    promote reads again and puts it right."""
    from gptpipe.tracking import registry
    from gptpipe.tracking.registry import VAL_SHA_TAG, promote
    from gptpipe.tracking.runs import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracker.client
    client.create_registered_model("gptpipe")
    runs = []
    for _ in range(2):
        runs.append(tracker.create_run("race", None, {}, {}))
        client.create_model_version("gptpipe", (tmp_path / "model").as_uri(), run_id=runs[-1],
                                    tags={VAL_SHA_TAG: "a" * 64})
    assert promote(tracker, runs[0], 2.0).startswith("champion -> gptpipe v1")
    real_set, stale = client.set_registered_model_alias, []

    def set_then_a_stale_evaluate_sets_v1(name, alias, version):
        real_set(name, alias, version)
        if not stale:  # the rival that read before v2's tag: once
            stale.append(str(version))
            real_set(name, alias, "1")

    client.set_registered_model_alias = set_then_a_stale_evaluate_sets_v1
    outcome = promote(tracker, runs[1], 1.5)
    assert stale == ["2"] and outcome.startswith("champion -> gptpipe v2"), outcome
    assert str(client.get_model_version_by_alias("gptpipe", "champion").version) == "2"
    assert registry._PROMOTE_ROUNDS > 1


LOG_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
from gptpipe.tracking import registry
from gptpipe.tracking.runs import Tracker
tracker = Tracker(sys.argv[1])
run_id = tracker.create_run("probe", "probe", {}, {})
logged = registry.log_model(tracker, run_id, Path("models/model.pt"),
                            Path("data/tokens/tokenizer.json"), None, name="probe")
print(json.dumps({"model_id": logged.model_id, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_logging_the_model_imports_no_torch_and_the_model_still_predicts(trained):
    """The tracking process logs the model without loading it (MLflow's serving check
    would import torch there: ~2 s at the end of every train stage); what it logged
    loads and predicts as gptpipe sample does."""
    result = run([sys.executable, "-c", LOG_WITHOUT_TORCH,
                  f"sqlite:///{trained / 'mlflow.db'}"], trained)
    logged = json.loads(result.stdout.strip().splitlines()[-1])
    assert logged["torch"] is False
    texts = _predict(trained, f"models:/{logged['model_id']}", PROMPT)
    assert PROMPT + texts[0] + "\n" == _sample(trained, "models/model.pt")
