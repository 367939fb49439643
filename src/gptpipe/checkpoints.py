"""Checkpoints and the trained model file: torch.save written atomically,
read back only with `weights_only=True` (no pickle of arbitrary objects).

A checkpoint carries what identifies its run (params and data hashes); one
from other params or data is refused with the keys that differ.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_path

# /2 (gptpipe 0.2): self-contained, the tokenizer's JSON inside
# (payload["tokenizer"]["json"], the exact bytes of its tokenizer.json), and the
# header says which eval step's weights it holds (train.keep).
MODEL_FORMAT = "gptpipe.model/2"
# gptpipe 0.1.x wrote format /1: the tokenizer only by reference (path and
# sha256), found beside the file or in its project. Still loaded.
LEGACY_MODEL_FORMATS = {"gptpipe.model/1": "gptpipe 0.1.x"}
# /2: each optimizer param group keeps its peak lr (initial_lr), which the
# schedule scales; /1 checkpoints lack it (and Muon's decay was another scale)
# /3: the trainer's state adds the best eval's weights and val loss (train.keep),
# early stopping's countdown, and the interval's gradient-norm sums; /2 lacks them
CHECKPOINT_FORMAT = "gptpipe.checkpoint/3"


def identity_key(identity: dict) -> str:
    """A short stable hash naming a run's checkpoint folder."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save(path: str | Path, payload: dict) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        # A file object, not the path: torch names the zip's top folder after the
        # file it is given, and the temp name is random (the bytes would differ).
        with open(tmp, "wb") as fh:
            out = _KeepWriteError(fh)
            try:
                torch.save(payload, out)
            except RuntimeError:
                # torch's zip writer reports a failed write (disk full, file too
                # large) as an opaque RuntimeError; surface the OSError behind it.
                if out.error is not None:
                    raise out.error from None
                raise


class _KeepWriteError:
    """A file wrapper that remembers the OSError torch.save's writer swallows."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def load(path: str | Path, what: str = "checkpoint") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no {what} here")
    try:
        # torch.load does not check the zip's CRCs: flipped bytes in a tensor would
        # load as silently wrong weights. Check every record first.
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"CRC mismatch in {bad}")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: corrupted or truncated {what}, refused ({first[:120]})") \
            from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals have several types
        raise UserError(f"{path}: not a gptpipe {what}, refused "
                        f"({type(exc).__name__})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise UserError(f"{path}: not a gptpipe {what}")
    return payload


def check_identity(path: Path, stored: dict, expected: dict) -> None:
    differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    if differ:
        shown = ", ".join(f"{k} ({stored.get(k)!r} != {expected.get(k)!r})" for k in differ[:4])
        raise UserError(f"{path}: checkpoint is from another run, refused: {shown}")


def model_payload(model_config: dict, state_dict: dict, tokenizer_path: Path,
                  **header) -> dict:
    """A model file's payload: the weights, their config, and the tokenizer both by
    reference and inside (its file's exact bytes, so their sha256 is the one named)."""
    text = Path(tokenizer_path).read_bytes()
    return {"format": MODEL_FORMAT, "model_config": model_config, "state_dict": state_dict,
            "tokenizer": {"path": Path(tokenizer_path).as_posix(),
                          "sha256": hashlib.sha256(text).hexdigest(),
                          "json": text.decode("utf-8")},
            **header}


def load_model_file(path: str | Path) -> dict:
    payload = load(path, "model file")
    found = payload.get("format")
    if found != MODEL_FORMAT and found not in LEGACY_MODEL_FORMATS:
        raise UserError(f"{path}: not a gptpipe model file (format {found!r})")
    ref = payload.get("tokenizer")
    if found == MODEL_FORMAT and not (isinstance(ref, dict) and isinstance(ref.get("json"), str)
                                      and _sha256(ref["json"]) == ref.get("sha256")):
        raise UserError(f"{path}: a gptpipe model file whose tokenizer is missing or damaged "
                        "(its sha256 differs), refused")
    return payload


def inner_tokenizer(model_path: str | Path, payload: dict,
                    outside: list[Path]) -> bytes | None:
    """The tokenizer JSON inside a model file (None: a legacy, gptpipe 0.1.x file,
    whose tokenizer is only referenced). Each existing file of `outside` (a
    tokenizer.json beside the model, or the one a caller names) must be that same
    tokenizer: else one line naming both."""
    text = payload["tokenizer"].get("json")
    if text is None:
        return None
    inside = _sha256(text)
    for candidate in outside:
        candidate = Path(candidate)
        if candidate.is_file():
            theirs = hashlib.sha256(candidate.read_bytes()).hexdigest()
            if theirs != inside:
                raise UserError(f"{candidate}: disagrees with the tokenizer inside {model_path} "
                                f"(sha256 {theirs[:12]} vs {inside[:12]}); remove or replace "
                                "it")
    return text.encode("utf-8")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
