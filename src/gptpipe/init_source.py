"""`train.init_from`: where the init stage puts the model a run starts from.

    models/init/model.pt        the source model file, byte for byte
    models/init/tokenizer.json  its tokenizer, byte for byte
    models/init/source.json     what was resolved: the param, run id, version, sha256s

Only names and reading source.json here (no torch, no MLflow): the tokenize
stage reads the tokenizer, train the model; init_resolve.py writes them.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .files import read_json

INIT_DIR = Path("models/init")
MODEL = INIT_DIR / "model.pt"
TOKENIZER = INIT_DIR / "tokenizer.json"
SOURCE = INIT_DIR / "source.json"
SCRATCH = "scratch"
# What model.pt and tokenizer.json hold when training from scratch: a line saying
# so (DVC warns about empty outputs on every run).
PLACEHOLDER = b"train.init_from is scratch: no start model\n"
URI_PREFIXES = ("runs:/", "models:/")
# model.* keys that may differ from the source model: dropout is a training-time
# regulariser, not part of the architecture (the weights fit any value).
FREE_MODEL_KEYS = ("dropout",)


def is_uri(init_from: str) -> bool:
    return init_from.startswith(URI_PREFIXES)


def read_source_or_none() -> dict | None:
    """source.json as it is, or None when absent or unreadable."""
    try:
        return read_json(SOURCE) if SOURCE.is_file() else None
    except UserError:  # not JSON: resolved afresh, as if absent
        return None


def read_source(init_from: str) -> dict:
    """source.json as the init stage wrote it for this very `init_from`."""
    if not SOURCE.is_file():
        raise UserError(f"{SOURCE}: not found (run the init stage: `dvc repro init`)")
    source = read_json(SOURCE)
    if source.get("init_from") != init_from.strip():
        raise UserError(f"{SOURCE}: resolved {source.get('init_from')!r}, not train.init_from "
                        f"{init_from!r}; rerun the init stage (`dvc repro`)")
    return source
