"""Security by construction: nothing gptpipe reads can run code.

Source-level checks over every Python file the project ships (src/, stages/,
benchmarks/, scripts/, tests/ and any other): no pickle under any name or alias,
torch.load only with weights_only=True, YAML only through safe loaders (the scanner,
tests/pickle_scan.py, is itself tested on a snippet of each form it must catch);
data.source limited to http, https, file and paths; and one live check: a checkpoint
that would run a shell command when unpickled is refused without running it.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pickle_scan import unsafe_loads

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__"}


def _shipped_python_files() -> list[Path]:
    """Every .py in the repo, outside hidden folders (.git, .venv, .dvc ...) and builds."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info")
               for p in parts[:-1]):
            continue
        out.append(path)
    return out


SOURCES = _shipped_python_files()


def _trees():
    assert len(SOURCES) > 10, SOURCES
    for path in SOURCES:
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _name(node: ast.AST) -> str:
    """`torch.load` for the call target torch.load, '' for anything dynamic."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _calls(tree: ast.AST, name: str):
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _name(node.func) == name]


def _keyword(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value
    return None


def test_the_scan_covers_every_kind_of_python_file_the_project_ships():
    folders = {path.relative_to(ROOT).parts[0] for path in SOURCES}
    assert {"src", "stages", "benchmarks", "tests"} <= folders, folders
    names = {path.relative_to(ROOT).as_posix() for path in SOURCES}
    assert {"src/gptpipe/checkpoints.py", "stages/train.py", "benchmarks/run.py",
            "tests/conftest.py", "tests/pickle_scan.py"} <= names
    # and scripts/ when it holds Python
    assert all(p.relative_to(ROOT).as_posix() in names for p in ROOT.glob("scripts/**/*.py"))


def test_no_pickle_anywhere_in_any_shipped_python_file():
    findings = {rel: found for rel, found in
                ((path.relative_to(ROOT).as_posix(),
                  unsafe_loads(path.read_text(encoding="utf-8"))) for path in SOURCES)
                if found}
    assert findings == {}


# Each form of unpickling the scanner must catch: one small file each.
UNSAFE_SNIPPETS = {
    "import pickle": "import pickle\npickle.loads(b'')",
    "from pickle import loads": "from pickle import loads as l\nl(b'')",
    "import cloudpickle": "import cloudpickle",
    "import dill": "import dill",
    "joblib.load": "import joblib\njoblib.load('m.pkl')",
    "import _pickle": "import _pickle as cp",
    "shelve": "import shelve\nshelve.open('x')",
    "torch.load without weights_only": "import torch\ntorch.load('m.pt')",
    "torch.load weights_only=False": "import torch\ntorch.load('m.pt', weights_only=False)",
    "torch.load weights_only from a variable":
        "import torch\nsafe = True\ntorch.load('m.pt', weights_only=safe)",
    "torch.load **kwargs": "import torch\nkw = {}\ntorch.load('m.pt', **kw)",
    "import torch as t; t.load": "import torch as t\nt.load('m.pt')",
    "from torch import load": "from torch import load\nload('m.pt')",
    "from torch import load as alias": "from torch import load as fetch\nfetch('m.pt')",
    "torch.serialization.load": "import torch\ntorch.serialization.load('m.pt')",
    "from torch.serialization import load":
        "from torch.serialization import load\nload('m.pt')",
    "from torch import serialization": "from torch import serialization\nserialization.load('m')",
    "import torch.serialization as ser": "import torch.serialization as ser\nser.load('m')",
    "t = torch; t.load": "import torch\nt = torch\nt.load('m.pt')",
    "loader = torch.load": "import torch\nloader = torch.load\nloader('m.pt')",
    "torch.load passed around": "import functools, torch\nf = functools.partial(torch.load)",
    "getattr(torch, 'load')": "import torch\ngetattr(torch, 'load')('m.pt')",
    "import at the bottom": "def f():\n    return load('m.pt')\nfrom torch import load",
    "np.load allow_pickle=True": "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "numpy.load allow_pickle=True": "import numpy\nnumpy.load('a.npy', allow_pickle=True)",
    "from numpy import load": "from numpy import load\nload('a.npy', allow_pickle=True)",
    "mlflow.pytorch.load_model": "import mlflow\nmlflow.pytorch.load_model('runs:/x/m')",
    "mlflow.pytorch.log_model": "import mlflow.pytorch\nmlflow.pytorch.log_model(m, 'm')",
    "from mlflow import pytorch": "from mlflow import pytorch\npytorch.load_model('x')",
    "pd.read_pickle": "import pandas as pd\npd.read_pickle('x')",
    "yaml.load": "import yaml\nyaml.load(open('p.yaml'), Loader=yaml.Loader)",
    "yaml.unsafe_load": "import yaml\nyaml.unsafe_load('a: 1')",
    "eval": "eval('1')",
    "exec": "exec('x = 1')",
    "__import__": "__import__('pickle')",
    "importlib.import_module": "import importlib\nimportlib.import_module('pick' + 'le')",
}
SAFE_SNIPPETS = {
    "torch.load weights_only=True": "import torch\ntorch.load('m.pt', weights_only=True)",
    "t.load weights_only=True": "import torch as t\nt.load('m.pt', weights_only=True)",
    "np.load default": "import numpy as np\nnp.load('a.npy', mmap_mode='r')",
    "np.load allow_pickle=False": "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
    "yaml.safe_load": "import yaml\nyaml.safe_load('a: 1')",
    "json.load": "import json\njson.load(open('a.json'))",
    "a method named load": "class M:\n    def load(self): ...\nM().load()",
    "model.eval()": "model = object()\nmodel.eval()",
    "the word pickle in a string": "MSG = 'no pickle: torch.load(weights_only=True)'",
}


@pytest.mark.parametrize("form", UNSAFE_SNIPPETS)
def test_the_pickle_scan_catches(form):
    assert unsafe_loads(UNSAFE_SNIPPETS[form]), f"{form!r} was not caught"


@pytest.mark.parametrize("form", SAFE_SNIPPETS)
def test_the_pickle_scan_accepts(form):
    assert unsafe_loads(SAFE_SNIPPETS[form]) == []


def test_the_scan_sees_the_real_loaders():
    """The project's own loaders are where the scan looks, called the safe way."""
    text = (ROOT / "src/gptpipe/checkpoints.py").read_text(encoding="utf-8")
    assert "weights_only=True" in text
    assert unsafe_loads(text.replace("weights_only=True", "weights_only=False"))


def test_numpy_and_yaml_are_read_without_code_execution():
    seen = set()
    for rel, tree in _trees():
        for call in _calls(tree, "np.load") + _calls(tree, "numpy.load"):
            value = _keyword(call, "allow_pickle")
            assert value is None or (isinstance(value, ast.Constant) and value.value is False), \
                f"{rel}:{call.lineno}: np.load with allow_pickle"
            seen.add("np.load")
        for name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            assert not _calls(tree, name), f"{rel}: {name} (use yaml.safe_load)"
        for name in ("eval", "exec"):
            assert not _calls(tree, name), f"{rel}: {name}()"
        if _calls(tree, "yaml.safe_load"):
            seen.add("yaml.safe_load")
    assert seen == {"np.load", "yaml.safe_load"}


def test_the_download_source_accepts_only_http_https_file_and_paths():
    tree = ast.parse((ROOT / "src/gptpipe/sources.py").read_text(encoding="utf-8"))
    fetch = next(node for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef) and node.name == "fetch")
    schemes = set()
    for node in ast.walk(fetch):  # every `scheme == ...` / `scheme in (...)` test
        if isinstance(node, ast.Compare) and _name(node.left) == "scheme":
            for comparator in node.comparators:
                for const in ast.walk(comparator):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        schemes.add(const.value)
    assert schemes == {"http", "https", "file"}
    raised = [node for node in ast.walk(fetch) if isinstance(node, ast.Raise)]
    assert any("unsupported scheme" in ast.unparse(node) for node in raised)
    # The product (src/, stages/) fetches URLs with requests (http and https adapters
    # only), never urllib's urlopen (which also speaks ftp:// and file://) or another
    # client. Tests and benchmarks may: tests/servers.py makes the S3 stand-in's
    # bucket with boto3.
    for rel, sub in _trees():
        if not rel.startswith(("src/", "stages/")):
            continue
        assert not _calls(sub, "urllib.request.urlopen") and not _calls(sub, "urlopen"), rel
        for node in ast.walk(sub):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name for a in node.names} | {getattr(node, "module", None) or ""}
                assert not names & {"ftplib", "urlopen", "boto3", "fsspec", "paramiko"}, rel


class _Bomb:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_pickle_bomb_checkpoint_is_refused_without_running_it(tmp_path, wrapped):
    import torch

    from gptpipe import checkpoints
    from gptpipe.errors import UserError
    from gptpipe.inference import load_model

    marker = tmp_path / "pwned"
    bomb = tmp_path / "checkpoint.pt"
    payload = _Bomb(marker)
    if wrapped:  # hidden inside an otherwise well-formed gptpipe checkpoint
        payload = {"format": checkpoints.CHECKPOINT_FORMAT, "identity": {},
                   "trainer": {"step": 1, "extra": payload}}
    torch.save(payload, bomb)
    assert not marker.exists()

    with pytest.raises(UserError, match=rf"^{bomb}: not a gptpipe checkpoint, refused "):
        checkpoints.load(bomb)
    model = tmp_path / "model.pt"
    model.write_bytes(bomb.read_bytes())
    with pytest.raises(UserError, match=rf"^{model}: not a gptpipe model file, refused "):
        load_model(model)
    assert not marker.exists(), "the checkpoint ran code while being loaded"
    # the bomb is live: an unsafe load (in another process: no unsafe load in this
    # file, which the pickle scan covers too) would run it
    subprocess.run([sys.executable, "-c", "import sys, torch; "
                    "torch.load(sys.argv[1], weights_only=False)", str(bomb)],
                   check=False, capture_output=True, timeout=120)
    assert marker.exists()
