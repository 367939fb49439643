"""Typed, validated params: the one place params.yaml is read and checked.

Every key has a type and a rule. An unknown key names the nearest valid one;
a wrong value names the key and what is wrong. A key with a fixed set of values
has a `Literal` type: its choices live there, once, for the check and the
message (params.yaml lists them in a comment; tests/test_params.py binds the
two, and the defaults). Floats are parsed robustly, because PyYAML (YAML 1.1)
reads `2e-5` as a string while DVC reads a float.
"""
from __future__ import annotations

import dataclasses
import difflib
import encodings
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError

PARAMS_FILE = "params.yaml"
MAX_LR = 1.0  # far above any useful step size (AdamW: ~1e-3), far below overflow
# logits / temperature: 0.01 is already greedy in all but name; a tiny one (1e-38)
# overflows fp32 logits to inf, and softmax turns them into nan
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


@dataclass(frozen=True)
class DataParams:
    source: str = "shakespeare"      # shakespeare | http(s) URL | file:// URL | path
    sha256: str = ""                 # optional expected sha256 of a single-file source
    max_bytes: int = 200_000_000     # size cap for downloads and local sources
    timeout_s: float = 30.0          # connect and read timeout for URLs
    retries: int = 3                 # retries on 5xx and connection errors


@dataclass(frozen=True)
class CleanParams:
    encoding: str = "utf-8"          # utf-8 | auto (BOM, then a detector) | any Python codec
    on_invalid_utf8: Literal["error", "replace"] = "error"  # replace: bad bytes -> U+FFFD
    max_replaced_fraction: float = 0.001  # replace: fail when more of a file is U+FFFD
    ascii_punctuation: bool = False  # fold typographic quotes and dashes to ASCII
    play_markdown: bool = True       # turn the embedded plays' markdown into SPEAKER: form
    stage_directions: bool = False   # keep stage directions from the plays
    strip_gutenberg: bool = True     # drop Project Gutenberg headers and licence


@dataclass(frozen=True)
class TokenizerParams:
    kind: Literal["char", "bpe", "tiktoken", "from_model"] = "char"  # from_model: init_from's
    vocab_size: int = 1024           # bpe only
    encoding: str = "gpt2"           # tiktoken only: gpt2 | cl100k_base | o200k_base | ...
    encoding_file: str = ""          # tiktoken only: a local .tiktoken file for offline use
    unknown_chars: Literal["error", "drop", "replace"] = "error"  # from_model, char: new chars


@dataclass(frozen=True)
class SplitParams:
    train_fraction: float = 0.9
    max_val_overlap: float = 0.05    # warn when more of val occurs verbatim in train


@dataclass(frozen=True)
class ModelParams:
    kind: Literal["gpt", "bigram", "modern"] = "gpt"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = False


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1.0e-3
    min_lr: float = 1.0e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    autocast: Literal["auto", "bf16", "off"] = "auto"
    threads: int = 0                 # torch threads on CPU; 0 = torch's default
    checkpoint_interval: int = 250
    grad_accum: int = 1
    launcher: str = "python"         # python | torchrun --nproc_per_node=N (dvc.yaml's cmd)
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: the blocks' matrices; the rest AdamW
    muon_lr: float = 0.02            # Muon's peak step; follows train.lr's warmup and decay
    init_from: str = "scratch"       # scratch | model file | runs:/<id>/model | models:/<name>@<a>


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 32             # windows per forward pass


@dataclass(frozen=True)
class SampleParams:
    prompts: tuple = ("\n", "ROMEO:")
    num_samples: int = 1
    max_new_tokens: int = 400
    temperature: float = 0.8
    top_k: Optional[int] = None      # null = off; else keep the k likeliest tokens
    top_p: float = 1.0               # 1.0 = off
    seed: int = 1337


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "gptpipe"
    log_model: bool = True           # log the trained model as an MLflow model
    registered_model: str = "gptpipe"  # each logged model: a new version of this name


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    clean: CleanParams = field(default_factory=CleanParams)
    tokenizer: TokenizerParams = field(default_factory=TokenizerParams)
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    sample: SampleParams = field(default_factory=SampleParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)

    def flat_sections(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def flat(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """`section.key -> value`, as MLflow and DVC name them."""
        out: dict[str, Any] = {}
        for name, section in dataclasses.asdict(self).items():
            if sections is None or name in sections:
                for key, value in section.items():
                    out[f"{name}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def choices(kind: Any) -> tuple[str, ...] | None:
    """The values a `Literal[...]` type allows; None for any other type."""
    return get_args(kind) if get_origin(kind) is Literal else None


def _coerce(key: str, value: Any, kind: Any) -> Any:
    if choices(kind) is not None:
        if not isinstance(value, str):
            raise UserError(f"params: {key}: expected a string, got {value!r}")
        return value  # checked against the choices in validate()
    if kind == Optional[int]:
        return None if value is None else _coerce(key, value, int)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"params: {key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"params: {key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool):
            raise UserError(f"params: {key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            result = float(value)  # YAML 1.1 reads `2e-5` as a string
        else:
            raise UserError(f"params: {key}: expected a number, got {value!r}")
        if not math.isfinite(result):
            raise UserError(f"params: {key}: must be finite, got {value!r}")
        return result
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise UserError(f"params: {key}: expected a string, got {value!r}")
        return value
    if kind is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"params: {key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(kind)


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"


def _build(cls: type, raw: Any, not_a_mapping: Callable[[], str],
           unknown: Callable[[str], str], build: Callable[[str, Any, Any], Any]) -> Any:
    """`cls` from the mapping `raw` (None: all defaults): each key must be a field
    of `cls` (else the error names the nearest one) and is built by `build(key,
    value, its type)`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(not_a_mapping())
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise UserError(unknown(key) + _suggest(str(key), names))
        values[key] = build(key, value, hints[key])
    return cls(**values)


def _build_section(cls: type, name: str, raw: Any) -> Any:
    return _build(cls, raw, lambda: f"params: {name}: expected a mapping of keys, got {raw!r}",
                  lambda key: f"params: unknown key '{name}.{key}'",
                  lambda key, value, hint: _coerce(f"{name}.{key}", value, hint))


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"params: {key}: must be one of {', '.join(allowed)}, got {value!r}")


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise UserError(f"params: {key}: must be {rule}, got {value!r}")


def _check_choices(p: Params) -> None:
    """Every `Literal` key holds one of its choices."""
    for section in dataclasses.fields(p):
        values = getattr(p, section.name)
        for name, kind in get_type_hints(type(values)).items():
            allowed = choices(kind)
            if allowed is not None:
                _choice(f"{section.name}.{name}", getattr(values, name), allowed)


def is_text_codec(name: str) -> bool:
    """A codec of Python's own `encodings` that decodes bytes to text. (Not
    codecs.lookup: a package may register a search function that accepts any name.)"""
    info = encodings.search_function(name.strip().lower())
    return info is not None and getattr(info, "_is_text_encoding", True)


def validate(p: Params) -> Params:
    """The rules a value must follow; each failure names its key."""
    _check_choices(p)
    _check(p.data.source.strip() != "", "data.source", "a non-empty source", p.data.source)
    _check(p.data.sha256 == "" or re.fullmatch(r"[0-9a-fA-F]{64}", p.data.sha256) is not None,
           "data.sha256", "empty or 64 hex digits", p.data.sha256)
    _check(p.data.max_bytes > 0, "data.max_bytes", "> 0", p.data.max_bytes)
    _check(0 < p.data.timeout_s <= 3600, "data.timeout_s", "in (0, 3600]", p.data.timeout_s)
    _check(0 <= p.data.retries <= 10, "data.retries", "between 0 and 10", p.data.retries)
    if p.clean.encoding != "auto" and not is_text_codec(p.clean.encoding):
        raise UserError(f"params: clean.encoding: unknown codec {p.clean.encoding!r} "
                        "(use utf-8, auto, or a Python text codec such as koi8_r, "
                        "cp1251, utf-16)")
    _check(0 <= p.clean.max_replaced_fraction <= 1, "clean.max_replaced_fraction",
           "between 0 and 1", p.clean.max_replaced_fraction)
    _check(p.tokenizer.kind != "from_model" or p.train.init_from.strip() != "scratch",
           "tokenizer.kind", "char, bpe or tiktoken when train.init_from is scratch "
           "(from_model reuses the init_from model's tokenizer)", p.tokenizer.kind)
    if p.tokenizer.kind == "bpe":
        _check(256 <= p.tokenizer.vocab_size <= 65536, "tokenizer.vocab_size",
               "between 256 and 65536 for bpe (uint16 token ids)", p.tokenizer.vocab_size)
    _check(0 < p.split.train_fraction < 1, "split.train_fraction",
           "strictly between 0 and 1", p.split.train_fraction)
    _check(0 <= p.split.max_val_overlap <= 1, "split.max_val_overlap", "between 0 and 1",
           p.split.max_val_overlap)
    m = p.model
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        _check(getattr(m, key) >= 1, f"model.{key}", ">= 1", getattr(m, key))
    _check(m.n_embd % m.n_head == 0, "model.n_embd",
           f"divisible by model.n_head ({m.n_head})", m.n_embd)
    if m.kind == "modern" and m.n_embd % m.n_head == 0:
        _check((m.n_embd // m.n_head) % 2 == 0, "model.n_embd",
               "an even multiple of model.n_head for modern (rotary embeddings)", m.n_embd)
    _check(0 <= m.dropout < 1, "model.dropout", "in [0, 1)", m.dropout)
    t = p.train
    _check(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
    _check(t.max_iters >= 1, "train.max_iters", ">= 1", t.max_iters)
    # Ranges that keep an update finite (an lr of 1e38 overflows the first step).
    _check(0 < t.lr <= MAX_LR, "train.lr", f"in (0, {MAX_LR:g}]", t.lr)
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", "between 0 and train.lr", t.min_lr)
    _check(t.warmup_iters >= 0, "train.warmup_iters", ">= 0", t.warmup_iters)
    _check(0 <= t.weight_decay <= 1, "train.weight_decay", "between 0 and 1", t.weight_decay)
    _check(0 <= t.beta1 < 1, "train.beta1", "in [0, 1)", t.beta1)
    _check(0 <= t.beta2 < 1, "train.beta2", "in [0, 1)", t.beta2)
    _check(0 <= t.grad_clip <= 1e6, "train.grad_clip", "between 0 (off) and 1e6",
           t.grad_clip)
    _check(0 <= t.seed < 2**63, "train.seed", "between 0 and 2**63 - 1", t.seed)
    _check(t.eval_interval >= 1, "train.eval_interval", ">= 1", t.eval_interval)
    _check(t.eval_batches >= 1, "train.eval_batches", ">= 1", t.eval_batches)
    _check(t.checkpoint_interval >= 1, "train.checkpoint_interval", ">= 1",
           t.checkpoint_interval)
    _check(t.grad_accum >= 1, "train.grad_accum", ">= 1", t.grad_accum)
    _check(0 <= t.threads <= 1024, "train.threads", "between 0 and 1024", t.threads)
    _check(t.launcher.split()[:1] in (["python"], ["python3"], ["torchrun"]), "train.launcher",
           "'python' or 'torchrun --nproc_per_node=N'", t.launcher)
    _check(0 < t.muon_lr <= MAX_LR, "train.muon_lr", f"in (0, {MAX_LR:g}]", t.muon_lr)
    _check(t.init_from.strip() != "", "train.init_from",
           "scratch, a model file, runs:/<id>/model or models:/<name>@<alias>", t.init_from)
    _check(p.evaluate.batch_size >= 1, "evaluate.batch_size", ">= 1", p.evaluate.batch_size)
    s = p.sample
    _check(len(s.prompts) >= 1, "sample.prompts", "a non-empty list", list(s.prompts))
    _check(s.num_samples >= 1, "sample.num_samples", ">= 1", s.num_samples)
    _check(s.max_new_tokens >= 1, "sample.max_new_tokens", ">= 1", s.max_new_tokens)
    _check(s.temperature == 0 or MIN_TEMPERATURE <= s.temperature <= MAX_TEMPERATURE,
           "sample.temperature",
           f"0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}", s.temperature)
    _check(s.top_k is None or s.top_k >= 1, "sample.top_k", ">= 1, or null for off", s.top_k)
    _check(0 < s.top_p <= 1, "sample.top_p", "in (0, 1]", s.top_p)
    _check(0 <= s.seed < 2**63, "sample.seed", "between 0 and 2**63 - 1", s.seed)
    _check(p.mlflow.experiment.strip() != "", "mlflow.experiment", "a non-empty name",
           p.mlflow.experiment)
    _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", p.mlflow.registered_model) is not None,
           "mlflow.registered_model", "a name of letters, digits, '_', '.', '-'",
           p.mlflow.registered_model)
    return p


def from_dict(raw: Any, source: str = PARAMS_FILE) -> Params:
    return validate(_build(
        Params, raw,
        lambda: f"{source}: expected a mapping of sections, got {type(raw).__name__}",
        lambda name: f"params: unknown section '{name}'",
        lambda name, value, section: _build_section(section, name, value)))


def load(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found (run from the project root)") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{where}: not valid YAML: "
                        f"{getattr(exc, 'problem', None) or exc}") from exc
    return from_dict(raw, str(path))
