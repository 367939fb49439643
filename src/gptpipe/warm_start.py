"""The model train starts from: a fresh one (scratch), or the weights the init
stage copied to models/init/ (fine-tuning).

A fine-tune takes the architecture from the source model. params' model.* keys
must agree with it, except dropout (a training-time regulariser: any value fits
the weights); a contradiction is an error naming the key and both values. The
tokenizer must be the source model's, byte for byte (tokenizer.kind: from_model).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints
from .errors import UserError
from .files import read_json, sha256_file
from .init_source import FREE_MODEL_KEYS, MODEL, SCRATCH, read_source
from .model import ModelConfig
from .params import Params


@dataclass(frozen=True)
class Start:
    config: ModelConfig
    state_dict: dict | None  # None: train from scratch
    source: dict             # source.json: what init_from resolved to

    @property
    def is_scratch(self) -> bool:
        return self.state_dict is None

    def load_into(self, model) -> None:
        """The source's weights into `model` (built from self.config)."""
        try:
            model.load_state_dict(self.state_dict)
        except (RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise UserError(f"train.init_from: {self.source['init_from']}: its weights do not "
                            f"fit its model_config ({first})") from None


def start(p: Params, tokenizer_path: Path) -> Start:
    vocab_size = read_json(tokenizer_path)["vocab_size"]
    init_from = p.train.init_from.strip()
    if init_from == SCRATCH:
        return Start(ModelConfig(**dataclasses.asdict(p.model), vocab_size=vocab_size), None,
                     {"init_from": SCRATCH})
    source = read_source(init_from)
    payload = checkpoints.load_model_file(MODEL)
    if sha256_file(MODEL) != source.get("model_sha256"):
        raise UserError(f"{MODEL}: not the model {init_from} resolved to (sha256 differs); "
                        "rerun the init stage (`dvc repro`)")
    # a key the model file lacks is one added since it was written: the default built it
    stored = dataclasses.asdict(ModelConfig()) | dict(payload["model_config"])
    free = ", ".join(f"model.{k}" for k in FREE_MODEL_KEYS)
    for key in stored:
        if key == "vocab_size" or key in FREE_MODEL_KEYS or not hasattr(p.model, key):
            continue
        if getattr(p.model, key) != stored[key]:
            raise UserError(f"model.{key}: {getattr(p.model, key)!r} contradicts the init_from "
                            f"model's {stored[key]!r} ({init_from}); set model.{key}: "
                            f"{stored[key]!r} (only {free} may differ)")
    if sha256_file(tokenizer_path) != source.get("tokenizer_sha256") \
            or vocab_size != stored["vocab_size"]:
        same = ", same size, other tokens" if vocab_size == stored["vocab_size"] else ""
        raise UserError(f"{tokenizer_path}: not the tokenizer of {init_from} (vocabulary "
                        f"{vocab_size} vs the model's {stored['vocab_size']}{same}); "
                        "set tokenizer.kind: from_model")
    stored.update({k: getattr(p.model, k) for k in FREE_MODEL_KEYS})
    return Start(ModelConfig(**stored), payload["state_dict"], source)
