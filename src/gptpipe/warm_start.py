"""The model train starts from: a fresh one (scratch), or the weights the init
stage copied to models/init/ (fine-tuning).

A fine-tune takes the architecture from the source model. params' model.* keys
must agree with it, except dropout (a training-time regulariser: any value fits
the weights); a contradiction is an error naming the key and both values. The
tokenizer must be the source model's, byte for byte (tokenizer.kind: from_model).
"""
from __future__ import annotations

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


def start(p: Params, tokenizer_path: Path) -> Start:
    vocab_size = read_json(tokenizer_path)["vocab_size"]
    init_from = p.train.init_from.strip()
    if init_from == SCRATCH:
        m = p.model
        return Start(ModelConfig(kind=m.kind, vocab_size=vocab_size, block_size=m.block_size,
                                 n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                                 dropout=m.dropout, bias=m.bias, tie_weights=m.tie_weights),
                     None, {"init_from": SCRATCH})
    source = read_source(init_from)
    payload = checkpoints.load_model_file(MODEL)
    if sha256_file(MODEL) != source.get("model_sha256"):
        raise UserError(f"{MODEL}: not the model {init_from} resolved to (sha256 differs); "
                        "rerun the init stage (`dvc repro`)")
    stored = dict(payload["model_config"])
    wanted = {f"model.{k}": getattr(p.model, k) for k in stored
              if k != "vocab_size" and hasattr(p.model, k) and k not in FREE_MODEL_KEYS}
    for key, value in wanted.items():
        if stored[key.split(".", 1)[1]] != value:
            raise UserError(f"{key}: {value!r} contradicts the init_from model's "
                            f"{stored[key.split('.', 1)[1]]!r} ({init_from}); set {key}: "
                            f"{stored[key.split('.', 1)[1]]!r} (only "
                            f"{', '.join('model.' + k for k in FREE_MODEL_KEYS)} may differ)")
    if sha256_file(tokenizer_path) != source.get("tokenizer_sha256") \
            or vocab_size != stored["vocab_size"]:
        raise UserError(f"{tokenizer_path}: not the tokenizer of {init_from} (vocabulary "
                        f"{vocab_size} vs the model's {stored['vocab_size']}"
                        f"{', same size but other tokens' if vocab_size == stored['vocab_size'] else ''}"
                        "); set tokenizer.kind: from_model")
    stored.update({k: getattr(p.model, k) for k in FREE_MODEL_KEYS})
    return Start(ModelConfig(**stored), payload["state_dict"], source)
