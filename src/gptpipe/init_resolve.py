"""Resolve `train.init_from` and materialise its bytes under models/init/ (the
init stage).

The init stage turns the param into the files init_source.py names, which the
rest of the pipeline depends on. Like `dvc import`, the resolution is pinned:
source.json (kept in git) records the version an alias pointed to and the
sha256 of the bytes, and a later run of the stage (a fresh clone without the
cached files, a forced repro) fetches that pinned version again, not where the
alias points now. Only `gptpipe init --update` (which drops the pin) resolves
afresh, so evaluate moving `champion` never makes the pipeline fine-tune again.
`scratch` writes placeholder model.pt and tokenizer.json files and a source.json
that says so: the graph stays one graph and a scratch pipeline never reruns for
it. Every source goes through tracking.registry.model_files, the one resolver of model
references (a path, a downloaded MLflow model folder, `runs:/...`,
`models:/...`); an alias is pinned to its version first. A plain model file's
tokenizer is looked up here. Torch (checkpoints' weights_only loader, to refuse
anything but a gptpipe model) and MLflow (URIs) are never imported for scratch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .files import sha256_bytes, sha256_file, write_bytes, write_json
from .init_source import (MODEL, PLACEHOLDER, SCRATCH, SOURCE, TOKENIZER, is_uri,
                          read_source_or_none)

TRAINED_MODEL = "models/model.pt"  # the train stage's output


@dataclass(frozen=True)
class Resolved:
    """A source model found on disk (a URI's files are downloaded first)."""
    init_from: str
    model_file: Path
    tokenizer_file: Path | None  # None: the one inside the model file
    run_id: str = ""        # the MLflow run that trained it, when the URI names one
    model_name: str = ""    # registered model name (models:/ URIs)
    version: str = ""       # registered model version (models:/ URIs)


def resolve_path(init_from: str) -> Resolved:
    """A gptpipe model file on disk, with the tokenizer inside it (a tokenizer.json
    beside it must be the same). A gptpipe 0.1.x model file only names its
    tokenizer: it lies beside it (tokenizer.json) or where its project keeps it (the
    path recorded in the model file, from the project root: models/model.pt ->
    data/tokens/tokenizer.json)."""
    path = Path(init_from).expanduser()
    if path.resolve() == Path(TRAINED_MODEL).resolve():
        raise UserError(f"train.init_from: {init_from}: this pipeline's own train output; "
                        "every `dvc repro` would fine-tune again from the last result: copy it "
                        "elsewhere, or use its runs:/ or models:/ URI")
    if not path.is_file():
        what = "a folder, not a model file" if path.is_dir() else "no such model file"
        raise UserError(f"train.init_from: {init_from}: {what}")
    ref = describe(path, init_from)["tokenizer"]
    if ref.get("json") is not None:
        from . import checkpoints

        try:
            checkpoints.inner_tokenizer(path, {"tokenizer": ref}, [path.parent / "tokenizer.json"])
        except UserError as exc:
            raise UserError(f"train.init_from: {init_from}: {exc}") from None
        return Resolved(init_from, path, None)
    candidates = [path.parent / "tokenizer.json",
                  path.parent.parent / ref.get("path", "data/tokens/tokenizer.json")]
    for candidate in candidates:
        if candidate.is_file() and sha256_file(candidate) == ref.get("sha256"):
            return Resolved(init_from, path, candidate)
    raise UserError(f"train.init_from: {init_from}: its tokenizer (sha256 "
                    f"{str(ref.get('sha256'))[:12]}) is not beside it; looked in "
                    f"{', '.join(str(c) for c in candidates)}")


def describe(model_file: Path, init_from: str) -> dict:
    """The model file's header (format, config, tokenizer ref), refusing anything
    that is not a loadable gptpipe model file. Loads with weights_only=True."""
    from . import checkpoints

    try:
        payload = checkpoints.load_model_file(model_file)
    except UserError as exc:
        raise UserError(f"train.init_from: {init_from}: {exc}") from None
    config, ref = payload.get("model_config"), payload.get("tokenizer")
    if not isinstance(config, dict) or not isinstance(ref, dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise UserError(f"train.init_from: {init_from}: a gptpipe model file without its "
                        "model_config, tokenizer or weights")
    return {"model_config": config, "tokenizer": ref}


def pinned_uri(init_from: str, pin: dict) -> str:
    """What to fetch for a pinned resolution: the version an alias named then."""
    if init_from.startswith("models:/") and pin.get("model_name") and pin.get("version"):
        return f"models:/{pin['model_name']}/{pin['version']}"
    return init_from


@contextlib.contextmanager
def opened(init_from: str, pin: dict | None = None) -> Iterator[Resolved]:
    """The source's files on disk for the `with` block, through the registry's one
    resolver of model references (a URI is downloaded to a temp dir that lives that
    long; an alias is first pinned to the version it names now, or to `pin`'s)."""
    from .tracking import registry

    try:
        if is_uri(init_from):
            pinned = registry.pin(pinned_uri(init_from, pin or {}))
            with registry.model_files(pinned["uri"]) as (weights, tokenizer):
                yield Resolved(init_from, weights, tokenizer, pinned["run_id"],
                               pinned["model_name"], pinned["version"])
            return
        with registry.model_files(init_from) as (weights, tokenizer):
            # a downloaded MLflow model folder names its tokenizer; a model file does not
            yield resolve_path(init_from) if tokenizer is None else \
                Resolved(init_from, weights, tokenizer)
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith("train.init_from")
                        else f"train.init_from: {message}") from None


def read_pin(init_from: str) -> dict | None:
    """source.json's resolution when it is one of this very `init_from` (a fresh clone
    has it from git; the stage keeps it, `persist` in dvc.yaml), else None."""
    pin = read_source_or_none()
    if not pin or pin.get("init_from") != init_from.strip() or not pin.get("model_sha256"):
        return None
    return pin


def materialise(init_from: str, pin: dict | None = None) -> dict:
    """Write models/init/ for `init_from` (the bytes `pin` names, when given);
    return what source.json holds."""
    init_from = init_from.strip()
    if init_from == SCRATCH:
        source = {"init_from": SCRATCH}
        write_bytes(MODEL, PLACEHOLDER)
        write_bytes(TOKENIZER, PLACEHOLDER)
        write_json(SOURCE, source)
        return source
    with opened(init_from, pin) as found:
        header = describe(found.model_file, init_from)
        model_bytes = found.model_file.read_bytes()
        tokenizer_bytes = found.tokenizer_file.read_bytes() if found.tokenizer_file \
            else header["tokenizer"]["json"].encode("utf-8")
    if pin and sha256_bytes(model_bytes) != pin["model_sha256"]:
        raise UserError(f"train.init_from: {init_from}: {SOURCE} pins model sha256 "
                        f"{pin['model_sha256'][:12]}, but it now holds "
                        f"{sha256_bytes(model_bytes)[:12]}; `gptpipe init --update` takes "
                        "the new model")
    if sha256_bytes(tokenizer_bytes) != header["tokenizer"].get("sha256"):
        raise UserError(f"train.init_from: {init_from}: its tokenizer.json is not the one "
                        "the model was trained with (sha256 differs)")
    # No local path in source.json: it names the source as the user wrote it.
    source = {"init_from": init_from, "run_id": found.run_id,
              "model_name": found.model_name, "version": found.version,
              "model_sha256": sha256_bytes(model_bytes),
              "tokenizer_sha256": sha256_bytes(tokenizer_bytes),
              "model_config": header["model_config"]}
    write_bytes(MODEL, model_bytes)
    write_bytes(TOKENIZER, tokenizer_bytes)
    write_json(SOURCE, source)
    return source
