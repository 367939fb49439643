"""Loading a trained model with its tokenizer, and sampling text from it;
shared by the evaluate and sample stages and the `gptpipe sample` command."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoints, tokenizers
from .errors import UserError
from .files import sha256_file
from .model import ModelConfig, build
from .params import SampleParams
from .sampling import generate


def load_model(model_path: str | Path, tokenizer_path: str | Path | None = None,
               device: str = "cpu"):
    model_path = Path(model_path)
    if not model_path.exists():
        raise UserError(f"{model_path}: no trained model yet; run `dvc repro train` first")
    payload = checkpoints.load_model_file(model_path)
    # The tokenizer inside the file; one given here, or a tokenizer.json beside the
    # file, must be the same.
    outside = [Path(tokenizer_path)] if tokenizer_path else [model_path.parent / "tokenizer.json"]
    inside = checkpoints.inner_tokenizer(model_path, payload, outside)
    if inside is not None:
        tokenizer = tokenizers.from_json(json.loads(inside), f"{model_path}: its tokenizer")
    else:
        tokenizer = tokenizers.load(_legacy_tokenizer(model_path, payload, tokenizer_path))
    model = build(ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(torch.device(device)).eval()
    return model, tokenizer


def _legacy_tokenizer(model_path: Path, payload: dict, tokenizer_path) -> Path:
    """A gptpipe 0.1.x model file names its tokenizer only by path and sha256: the
    one given, else a tokenizer.json beside it, else that path."""
    ref = payload["tokenizer"]
    beside = model_path.parent / "tokenizer.json"
    tokenizer_path = Path(tokenizer_path or (beside if beside.is_file() else ref["path"]))
    if not tokenizer_path.exists():
        raise UserError(f"{tokenizer_path}: the tokenizer of {model_path} (a "
                        f"{checkpoints.LEGACY_MODEL_FORMATS[payload['format']]} model file, "
                        "which does not hold it) is missing; run `dvc repro tokenize` (or "
                        "`dvc checkout`)")
    if sha256_file(tokenizer_path) != ref["sha256"]:
        raise UserError(f"{tokenizer_path}: not the tokenizer {model_path} was trained with "
                        "(sha256 differs); run `dvc repro` to retrain")
    return tokenizer_path


def encode_prompt(tokenizer, prompt: str, what: str) -> list[int]:
    if prompt == "":
        raise UserError(f"{what}: the prompt is empty; give at least one character")
    return tokenizer.encode(prompt, what).tolist()


def sample_texts(model, tokenizer, s: SampleParams) -> list[dict]:
    """num_samples texts per prompt; sample i of prompt j uses seed s.seed + i."""
    rows = []
    for j, prompt in enumerate(s.prompts):
        ids = encode_prompt(tokenizer, prompt, f"sample.prompts[{j}]")
        for i in range(s.num_samples):
            seed = s.seed + i
            new = generate(model, ids, s.max_new_tokens, temperature=s.temperature,
                           top_k=s.top_k, top_p=s.top_p, seed=seed)
            rows.append({"prompt": prompt, "seed": seed, "text": tokenizer.decode(new)})
    return rows
