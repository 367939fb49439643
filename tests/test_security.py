"""Security by construction: nothing gptpipe reads can run code.

Source-level checks over src/ and stages/ (no pickle, torch.load only with
weights_only=True, YAML only through safe loaders, data.source limited to http,
https, file and paths), and one live check: a checkpoint that would run a shell
command when unpickled is refused without running it.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src" / "gptpipe").rglob("*.py"), *(ROOT / "stages").glob("*.py")])
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal",
                  "joblib"}


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


def test_no_pickle_anywhere_in_the_source():
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & UNSAFE_MODULES, f"{rel}:{node.lineno} imports {names}"
    for path in SOURCES:  # and not by a dynamic import either
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text and "import pickle" not in text, path
        assert "__import__(" not in text and "importlib.import_module(" not in text, path


def test_every_torch_load_passes_weights_only_true():
    loads = []
    for rel, tree in _trees():
        for call in _calls(tree, "torch.load"):
            value = _keyword(call, "weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, \
                f"{rel}:{call.lineno}: torch.load without weights_only=True"
            loads.append(rel)
        # torch.load under another name (from torch import load; t = torch) is not allowed
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "load" not in {a.name for a in node.names}, f"{rel}:{node.lineno}"
    assert "src/gptpipe/checkpoints.py" in loads  # the scan sees the real loader


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
    # URLs are fetched by requests (http and https adapters only), never urllib's
    # urlopen, which also speaks ftp:// and file://
    for rel, sub in _trees():
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
    torch.load(bomb, weights_only=False)  # the bomb is live: an unsafe load would run it
    assert marker.exists()
