"""dvc: a no-op `dvc repro` of gptpipe's pipeline (nothing runs) vs a plain chain
of as many stages: what gptpipe's deps, params and scripts add to DVC's own cost.
A second plain chain whose stages list as many file deps as gptpipe's shows how much
of that is DVC's cost per dep (gptpipe lists every module a stage imports), and a copy
of gptpipe's project whose stages list the package's folder instead of their modules
what declaring code coarsely would save."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from .common import (NOOP_ROUNDS, QUICK_TRAIN, RECIPE_PRESET, REF_NOOP_S, Context, median,
                     ratio)
from .measure import Project, dvc_bin, git_dvc_init, load_yaml
from .stages import _stage_row


def _chain_project(path: Path, ctx: Context, extra_deps: list[int]) -> Project:
    """A plain DVC pipeline of len(extra_deps) trivial stages, each copying the previous
    file; stage i also depends on extra_deps[i] small files of lib/."""
    path.mkdir(parents=True)
    proj = Project(path, ctx.python, None, copy=False)
    (path / "s0.txt").write_text("hello\n")
    (path / "lib").mkdir()
    for j in range(max(extra_deps)):
        (path / "lib" / f"m{j}.py").write_text(f"X = {j}\n")
    stages = {f"s{i}": {"cmd": f"cp s{i - 1}.txt s{i}.txt",
                        "deps": [f"s{i - 1}.txt", *(f"lib/m{j}.py" for j in range(extra))],
                        "outs": [f"s{i}.txt"]}
              for i, extra in enumerate(extra_deps, start=1)}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    git_dvc_init(proj)
    proj.run([dvc_bin(ctx.python), "repro", "-q"])
    return proj


def _folder_deps_copy(proj: Project, path: Path, dvc: str) -> Project:
    """`proj` copied with each stage's src/gptpipe module deps replaced by one dep on the
    src/gptpipe folder (so any edit in the package would rerun every stage), and
    recorded in dvc.lock without running anything."""
    shutil.copytree(proj.path, path, symlinks=True)
    dvc_yaml = load_yaml(path / "dvc.yaml")
    for stage in dvc_yaml["stages"].values():
        script, *rest = [dep for dep in stage["deps"] if not dep.startswith("src/gptpipe/")]
        stage["deps"] = [script, "src/gptpipe", *rest]
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False), encoding="utf-8")
    with open(path / ".dvcignore", "a", encoding="utf-8") as ignore:
        ignore.write("__pycache__/\n")  # Python's bytecode is not the code
    copy = Project(path, proj.python, None, copy=False)
    copy.run([dvc, "commit", "-f", "-q"])
    return copy


def bench_dvc(ctx: Context) -> None:
    """evaluate and sample on tinyshakespeare (the last model trained), then `dvc
    commit` records the stages and a no-op `dvc repro` is timed against a
    plain chain's; the same for the embedded corpus's project when all its
    stages ran."""
    projects = {}
    if ctx.shakes is not None:
        proj = ctx.shakes
        if not (proj.path / "models" / "model.pt").exists():  # --only dvc
            proj.set_params(load_yaml(RECIPE_PRESET), {"data": {"source": str(ctx.corpus)}},
                            QUICK_TRAIN)
            proj.stage("train", "for-dvc")
        for name in ("evaluate", "sample"):
            _stage_row(ctx, "tinyshakespeare", name, proj.stage(name), ", the last model trained")
        projects["tinyshakespeare"] = proj
    emb = ctx.dvc_project
    if emb is not None and (emb.path / "reports" / "samples.json").exists():
        projects["embedded corpus"] = emb
    if not projects:
        raise RuntimeError("needs the stages section")
    dvc = dvc_bin(ctx.python)
    for proj in projects.values():
        if not (proj.path / "models" / "init" / "source.json").exists():
            proj.stage("init")  # the tinyshakespeare project ran only the data stages
        proj.run([dvc, "commit", "-f", "-q"])  # record the stages just run in dvc.lock
    ours_stages = yaml.safe_load((next(iter(projects.values())).path / "dvc.yaml")
                                 .read_text(encoding="utf-8"))["stages"]
    n_stages = len(ours_stages)
    chain = _chain_project(ctx.tmp / "chain", ctx, [0] * n_stages)
    # as many deps per stage as gptpipe's (its first dep is the chain's previous file)
    n_deps = [len(stage["deps"]) - 1 for stage in ours_stages.values()]
    chain_deps = _chain_project(ctx.tmp / "chain-deps", ctx, n_deps)
    first_label, first = next(iter(projects.items()))
    others = {"chain": chain, "chain-deps": chain_deps,
              "folder-deps": _folder_deps_copy(first, ctx.tmp / "folder-deps", dvc)}
    times: dict[str, list[float]] = {label: [] for label in [*projects, *others]}
    for _ in range(2 if ctx.quick else NOOP_ROUNDS):  # interleaved
        for label, p in [*projects.items(), *others.items()]:
            start = time.perf_counter()
            out = p.run([dvc, "repro"])
            times[label].append(time.perf_counter() - start)
            status = json.loads(p.run([dvc, "status", "--json"]).stdout or "{}")
            # a stage ran (the status after it is clean) or would run next time
            if "Running stage" in out.stdout or status:
                raise RuntimeError(f"`dvc repro` in {p.path} was not a no-op:\n{out.stdout}"
                                   f"\n`dvc status`: {status}")
    plain = median(times["chain"])
    with_deps = median(times["chain-deps"])
    ctx.add("dvc", f"no-op `dvc repro`, a plain {n_stages}-stage chain whose stages list as "
            f"many file deps as gptpipe's ({sum(n_deps) + n_stages} in all)", f"{with_deps:.2f} s",
            f"plain {n_stages}-stage chain, {plain:.2f} s", ratio(with_deps, plain))
    for label in projects:
        ours = median(times[label])
        ctx.add("dvc", f"no-op `dvc repro`, gptpipe's {n_stages} stages ({label})",
                f"{ours:.2f} s ({ratio(ours, with_deps)} the chain with as many deps)",
                f"plain {n_stages}-stage chain, {plain:.2f} s "
                f"(reference: 7 plain stages {REF_NOOP_S} s)",
                ratio(ours, plain), ctx.judge("<= 1.2x", ours / plain <= 1.2))
    folder = median(times["folder-deps"])
    ctx.add("dvc", f"no-op `dvc repro`, the same {n_stages} stages ({first_label}) "
            "with each one's `src/gptpipe` module deps as one dep on the folder (any edit "
            "in the package would rerun them all)",
            f"{folder:.2f} s ({ratio(folder, median(times[first_label]))} gptpipe's)",
            f"plain {n_stages}-stage chain, {plain:.2f} s", ratio(folder, plain))
