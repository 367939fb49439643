"""dvc.yaml's code deps are the imports: each stage lists its script and every
module of src/gptpipe/ that script imports, directly or through other modules
(also imports inside functions). Computed from the source with `ast`, nothing
imported, so a module missing from a stage's deps (a stale cached result) or
listed without being imported fails here, naming the stage and the module."""
from __future__ import annotations

import ast
import copy
import functools
import re
from pathlib import Path

import pytest
import yaml

from projects import ROOT

PACKAGE = "gptpipe"
SRC = Path("src")
CODE_DIRS = ("stages/", "src/")  # a dep under these is code; any other is data


def module_file(root: Path, dotted: str) -> Path | None:
    """src/gptpipe/x.py (or x/__init__.py) for `gptpipe.x`, relative to `root`."""
    base = SRC.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    """The dotted package a module file in src/ belongs to (for __init__.py: itself)."""
    return ".".join(path.relative_to(SRC).parts[:-1])


def _imported(root: Path, path: Path) -> set[str]:
    """The dotted gptpipe modules `path` imports anywhere in its body (a module
    imported as `gptpipe.a.b` also runs its packages, `gptpipe` and `gptpipe.a`)."""
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only library modules have them
                package = _package_of(path).split(".")
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from gptpipe import params`: a submodule, when one has that name
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if module_file(root, f"{base}.{alias.name}"))
    modules = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return modules


@functools.lru_cache(maxsize=None)
def import_closure(root: Path, script: Path) -> frozenset[str]:
    """The script and every src/gptpipe file it imports, transitively, as paths
    relative to `root` (posix, as dvc.yaml writes them)."""
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for dotted in _imported(root, todo.pop()):
            found = module_file(root, dotted)
            assert found is not None, f"{dotted} is imported but no file holds it"
            if found not in seen:
                seen.add(found)
                todo.append(found)
    return frozenset(p.as_posix() for p in seen)


def stage_script(cmd: str) -> Path:
    match = re.search(r"stages/\S+\.py", cmd)
    assert match, f"no stages/*.py script in cmd {cmd!r}"
    return Path(match.group(0))


def code_deps(stage: dict) -> set[str]:
    deps = [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps") or []]
    return {d for d in deps if d.startswith(CODE_DIRS)}


def deps_problems(root: Path, dvc_yaml: dict) -> list[str]:
    """One line per stage whose code deps differ from its import closure."""
    problems = []
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        wanted = import_closure(root, stage_script(stage["cmd"]))
        listed = code_deps(stage)
        for path in sorted(wanted - listed):
            problems.append(f"stage {name}: missing dep {path} (imported)")
        for path in sorted(listed - wanted):
            problems.append(f"stage {name}: surplus dep {path} (not imported)")
    return problems


def load_dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def test_each_stages_code_deps_are_its_import_closure():
    problems = deps_problems(ROOT, load_dvc_yaml())
    assert not problems, ("dvc.yaml deps differ from the imports (fix dvc.yaml):\n"
                          + "\n".join(problems))


def _listed_modules() -> list[tuple[str, str]]:
    return [(name, dep) for name, stage in load_dvc_yaml()["stages"].items()
            for dep in sorted(code_deps(stage))]


@pytest.mark.parametrize("stage, dep", _listed_modules())
def test_removing_any_code_dep_fails_naming_stage_and_module(stage, dep):
    mutated = copy.deepcopy(load_dvc_yaml())
    deps = mutated["stages"][stage]["deps"]
    deps[:] = [d for d in deps if d != dep]
    assert deps_problems(ROOT, mutated) == [f"stage {stage}: missing dep {dep} (imported)"]


def test_a_surplus_module_fails_naming_stage_and_module():
    mutated = copy.deepcopy(load_dvc_yaml())
    mutated["stages"]["download"]["deps"].append("src/gptpipe/model.py")
    assert deps_problems(ROOT, mutated) == [
        "stage download: surplus dep src/gptpipe/model.py (not imported)"]


def test_the_closure_follows_every_import_form(tmp_path):
    """Absolute, relative, `from pkg import module`, function-level imports,
    and imports of imports."""
    lib = tmp_path / "src" / PACKAGE
    lib.mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    files = {
        "src/gptpipe/__init__.py": "",
        "src/gptpipe/a.py": "from . import b\n",
        "src/gptpipe/b.py": "def f():\n    from .c import thing\n",
        "src/gptpipe/c.py": "import os\nthing = 1\n",
        "src/gptpipe/d.py": "import gptpipe.e\n",
        "src/gptpipe/e.py": "",
        "src/gptpipe/unused.py": "",
        "stages/s.py": ("import json\nfrom gptpipe import a\n"
                        "def main():\n    from gptpipe.d import x\n"),
    }
    for path, text in files.items():
        (tmp_path / path).write_text(text)
    assert import_closure(tmp_path, Path("stages/s.py")) == {
        "stages/s.py", "src/gptpipe/__init__.py", "src/gptpipe/a.py", "src/gptpipe/b.py",
        "src/gptpipe/c.py", "src/gptpipe/d.py", "src/gptpipe/e.py"}
