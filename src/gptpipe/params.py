"""Typed, validated params: the one place params.yaml is read and checked.

Every key has a type, and its rule beside it: a key with a fixed set of values
has a `Literal` type (its choices live there, once, for the check and the
message), a bounded one a `Range` and any other rule a `Rule`, in the field's
metadata (`checked(default, rule)`); one loop checks them all. `validate` keeps
the rules that span keys. An unknown key names the nearest valid one; a wrong
value names the key and what is wrong. params.yaml states the choices and ranges
in comments; tests/test_params.py binds them, and the defaults, to these fields.
Floats are parsed robustly, because PyYAML (YAML 1.1) reads `2e-5` as a string
while DVC reads a float.
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

from ruamel.yaml import YAML, YAMLError

from .errors import UserError

PARAMS_FILE = "params.yaml"


@dataclass
class Range:
    """lo <= value <= hi, either end open (strict) or absent; `also`: values allowed
    outside (0 = off); `text`: the message's wording when not the generated one.
    (Not frozen: tests/test_faults.py lifts LR_RANGE's bound to reach the NaN guard.)"""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    text: str = ""

    def ok(self, value: Any) -> bool:
        if value in self.also:
            return True
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        """">= 1", "between 0 and 1", "in (0, 1]", "strictly between 0 and 1", ..."""
        if self.text:
            return self.text
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        if self.lo_open and self.hi_open:
            return f"strictly between {self.lo:g} and {self.hi:g}"
        if self.lo_open or self.hi_open:
            return (f"in {'(' if self.lo_open else '['}{self.lo:g}, "
                    f"{self.hi:g}{')' if self.hi_open else ']'}")
        return f"between {self.lo:g} and {self.hi:g}"

    def error(self, value: Any) -> str | None:
        return None if self.ok(value) else f"must be {self.describe()}, got {value!r}"


@dataclass(frozen=True)
class Rule:
    """Any other rule for one key: `ok(value)`, else the error says `must be <text>,
    got <value>`, or `problem(value)` when given."""
    ok: Callable[[Any], bool]
    text: str = ""
    problem: Callable[[Any], str] | None = None

    def error(self, value: Any) -> str | None:
        if self.ok(value):
            return None
        if self.problem is not None:
            return self.problem(value)
        shown = list(value) if isinstance(value, tuple) else value
        return f"must be {self.text}, got {shown!r}"


def checked(default: Any, rule: Range | Rule) -> Any:
    """A field whose value must follow `rule` (a default outside it fails validate)."""
    return field(default=default, metadata={"rule": rule})


def rule_of(f: dataclasses.Field) -> Range | Rule | None:
    return f.metadata.get("rule")


def _non_empty(what: str) -> Rule:
    return Rule(lambda text: text.strip() != "", what)


def _torchrun_flags(cmd: str) -> dict[str, str]:
    """torchrun's --flags in a launcher, `-` and `_` spellings alike: {name: value}."""
    flags, words = {}, cmd.split()[1:]
    for i, word in enumerate(words):
        if word.startswith("--"):
            name, eq, value = word[2:].replace("_", "-").partition("=")
            if not eq and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value = words[i + 1]
            flags[name] = value
    return flags


def launcher_problem(cmd: str) -> str | None:
    """Why a train.launcher cannot work, or None: python, or torchrun; several
    nodes (--nnodes above 1) need a rendezvous address every node can reach."""
    words = cmd.split()
    if words[:1] not in (["python"], ["python3"], ["torchrun"]):
        return f"must be 'python' or 'torchrun ...', got {cmd!r}"
    if words[0] != "torchrun":
        return None
    flags = _torchrun_flags(cmd)
    nnodes = flags.get("nnodes", "1")
    try:
        most = int(nnodes.split(":")[-1])
    except ValueError:
        return f"torchrun --nnodes must be N or MIN:MAX, got {nnodes!r}"
    if most > 1 and "standalone" in flags:
        return "torchrun --standalone is one machine: drop it with --nnodes above 1"
    if most > 1 and not ({"rdzv-endpoint", "master-addr"} & flags.keys()):
        return ("torchrun with --nnodes above 1 needs the address of node 0, which every "
                "node can reach: --rdzv-endpoint=HOST:PORT, or --master-addr=HOST "
                f"--master-port=PORT, got {cmd!r}")
    return None


MAX_LR = 1.0  # far above any useful step size (AdamW: ~1e-3), far below overflow
# Ranges that keep an update finite (an lr of 1e38 overflows the first step).
LR_RANGE = Range(0, MAX_LR, lo_open=True)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)
BELOW_1 = Range(0, 1, hi_open=True)
SEED = Range(0, 2**63, hi_open=True, text="between 0 and 2**63 - 1")
# logits / temperature: 0.01 is already greedy in all but name; a tiny one (1e-38)
# overflows fp32 logits to inf, and softmax turns them into nan
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


@dataclass(frozen=True)
class DataParams:
    # shakespeare | http(s) URL | file:// URL | path
    source: str = checked("shakespeare", _non_empty("a non-empty source"))
    sha256: str = checked("", Rule(  # optional expected sha256 of a single-file source
        lambda h: h == "" or re.fullmatch(r"[0-9a-fA-F]{64}", h) is not None,
        "empty or 64 hex digits"))
    max_bytes: int = checked(200_000_000, Range(0, lo_open=True))  # a cap for all sources
    timeout_s: float = checked(30.0, Range(0, 3600, lo_open=True))  # connect and read, URLs
    retries: int = checked(3, Range(0, 10))  # retries on 5xx and connection errors


@dataclass(frozen=True)
class CleanParams:
    encoding: str = checked("utf-8", Rule(  # utf-8 | auto (BOM, then a detector) | a codec
        lambda name: name == "auto" or is_text_codec(name),
        problem=lambda name: f"unknown codec {name!r} (use utf-8, auto, or a Python text "
                             "codec such as koi8_r, cp1251, utf-16)"))
    on_invalid_utf8: Literal["error", "replace"] = "error"  # replace: bad bytes -> U+FFFD
    max_replaced_fraction: float = checked(0.001, FRACTION)  # replace: fail above, per file
    ascii_punctuation: bool = False  # fold typographic quotes and dashes to ASCII
    play_markdown: bool = True       # turn the embedded plays' markdown into SPEAKER: form
    stage_directions: bool = False   # keep stage directions from the plays
    strip_gutenberg: bool = True     # drop Project Gutenberg headers and licence


@dataclass(frozen=True)
class TokenizerParams:
    kind: Literal["char", "bpe", "tiktoken", "from_model"] = "char"  # from_model: init_from's
    vocab_size: int = 1024           # bpe only (its range, in validate)
    encoding: str = "gpt2"           # tiktoken only: gpt2 | cl100k_base | o200k_base | ...
    encoding_file: str = ""          # tiktoken only: a local .tiktoken file for offline use
    unknown_chars: Literal["error", "drop", "replace"] = "error"  # from_model, char: new chars


@dataclass(frozen=True)
class SplitParams:
    train_fraction: float = checked(0.9, Range(0, 1, lo_open=True, hi_open=True))
    max_val_overlap: float = checked(0.05, FRACTION)  # warn when more of val is in train


@dataclass(frozen=True)
class ModelParams:
    kind: Literal["gpt", "bigram", "modern"] = "gpt"
    n_layer: int = checked(4, AT_LEAST_1)
    n_head: int = checked(4, AT_LEAST_1)
    n_embd: int = checked(128, AT_LEAST_1)
    block_size: int = checked(64, AT_LEAST_1)
    dropout: float = checked(0.0, BELOW_1)
    bias: bool = True
    tie_weights: bool = False
    value_embeds: bool = False  # modern: each layer adds a learned vector per token to its values


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = checked(12, AT_LEAST_1)
    max_iters: int = checked(2000, AT_LEAST_1)
    lr: float = checked(1.0e-3, LR_RANGE)
    min_lr: float = 1.0e-4           # between 0 and lr (in validate)
    warmup_iters: int = checked(100, Range(0))
    weight_decay: float = checked(0.1, FRACTION)
    beta1: float = checked(0.9, BELOW_1)
    beta2: float = checked(0.99, BELOW_1)
    grad_clip: float = checked(1.0, Range(0, 1e6, text="between 0 (off) and 1e6"))
    eval_interval: int = checked(250, AT_LEAST_1)
    eval_batches: int = checked(20, AT_LEAST_1)
    seed: int = checked(1337, SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    autocast: Literal["auto", "bf16", "off"] = "auto"
    threads: int = checked(0, Range(0, 1024))  # torch threads on CPU; 0 = torch's default
    checkpoint_interval: int = checked(250, AT_LEAST_1)
    grad_accum: int = checked(1, AT_LEAST_1)
    # python | torchrun --nproc_per_node=N | torchrun --nnodes=M ... (docs/more-machines.md)
    launcher: str = checked("python", Rule(
        lambda cmd: launcher_problem(cmd) is None,
        "'python' or 'torchrun --nproc_per_node=N'", problem=launcher_problem))
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: the blocks' matrices; the rest AdamW
    muon_lr: float = checked(0.02, LR_RANGE)  # Muon's peak step; the schedule scales it
    muon_momentum: float = checked(0.95, BELOW_1)  # Muon's Nesterov momentum
    muon_ns_steps: int = checked(5, Range(1, 20))  # Newton-Schulz iterations per Muon step
    muon_ns_coefficients: Literal["quintic", "polar_express"] = "quintic"
    init_from: str = checked("scratch", _non_empty(
        "scratch, a model file, runs:/<id>/model or models:/<name>@<alias>"))
    keep: Literal["best", "last"] = "best"  # the weights shipped: lowest val loss, or the last
    early_stop_patience: int = checked(0, Range(0, 1_000_000))  # evals; 0 = off
    early_stop_min_delta: float = checked(0.0, Range(0, 1e6))  # nats an eval must gain
    peak_gflops: float = checked(0.0, Range(0, 1e9))  # the device's peak, for MFU; 0 = unknown


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = checked(32, AT_LEAST_1)  # windows per forward pass
    # the train split: this many evenly spread windows (the same every run); 0 = all
    train_windows: int = checked(4096, Range(0))


@dataclass(frozen=True)
class SampleParams:
    prompts: tuple = checked(("\n", "ROMEO:"), Rule(lambda p: len(p) >= 1, "a non-empty list"))
    num_samples: int = checked(1, AT_LEAST_1)
    max_new_tokens: int = checked(400, AT_LEAST_1)
    temperature: float = checked(0.8, Range(
        MIN_TEMPERATURE, MAX_TEMPERATURE, also=(0,),
        text=f"0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}"))
    # null = off; else keep the k likeliest tokens
    top_k: Optional[int] = checked(None, Range(1, text=">= 1, or null for off"))
    top_p: float = checked(1.0, Range(0, 1, lo_open=True))  # 1.0 = off
    seed: int = checked(1337, SEED)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = checked("gptpipe", _non_empty("a non-empty name"))
    log_model: bool = True           # log the trained model as an MLflow model
    log_checkpoints: bool = False    # also each eval step's weights, as a LoggedModel
    registered_model: str = checked("gptpipe", Rule(  # each logged model: a new version
        lambda name: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None,
        "a name of letters, digits, '_', '.', '-'"))


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


def _check_fields(p: Params) -> None:
    """Every key's own rule: a `Literal` key holds one of its choices; a key with a
    rule in its metadata follows it (null, where the type allows it, always does)."""
    for section in dataclasses.fields(p):
        values = getattr(p, section.name)
        hints = get_type_hints(type(values))
        for f in dataclasses.fields(values):
            key, value = f"{section.name}.{f.name}", getattr(values, f.name)
            allowed = choices(hints[f.name])
            if allowed is not None:
                _choice(key, value, allowed)
            rule = rule_of(f)
            if rule is not None and value is not None and (error := rule.error(value)):
                raise UserError(f"params: {key}: {error}")


def is_text_codec(name: str) -> bool:
    """A codec of Python's own `encodings` that decodes bytes to text. (Not
    codecs.lookup: a package may register a search function that accepts any name.)"""
    info = encodings.search_function(name.strip().lower())
    return info is not None and getattr(info, "_is_text_encoding", True)


def validate(p: Params) -> Params:
    """Each key's own rule (beside its field), then the rules that span keys; each
    failure names its key."""
    _check_fields(p)
    _check(p.tokenizer.kind != "from_model" or p.train.init_from.strip() != "scratch",
           "tokenizer.kind", "char, bpe or tiktoken when train.init_from is scratch "
           "(from_model reuses the init_from model's tokenizer)", p.tokenizer.kind)
    if p.tokenizer.kind == "bpe":
        _check(256 <= p.tokenizer.vocab_size <= 65536, "tokenizer.vocab_size",
               "between 256 and 65536 for bpe (uint16 token ids)", p.tokenizer.vocab_size)
    m = p.model
    _check(m.n_embd % m.n_head == 0, "model.n_embd",
           f"divisible by model.n_head ({m.n_head})", m.n_embd)
    if m.kind == "modern":
        _check((m.n_embd // m.n_head) % 2 == 0, "model.n_embd",
               "an even multiple of model.n_head for modern (rotary embeddings)", m.n_embd)
    _check(m.kind == "modern" or not m.value_embeds, "model.value_embeds",
           f"false unless model.kind is modern (got kind {m.kind})", m.value_embeds)
    t = p.train
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", "between 0 and train.lr", t.min_lr)
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
        # YAML 1.2, as DVC reads it: `dvc exp run -S train.autocast=off` writes a bare
        # `off`, which YAML 1.1 (PyYAML) would read as false, and 2e-5 is a number.
        raw = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found (run from the project root)") from exc
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{where}: not valid YAML: "
                        f"{getattr(exc, 'problem', None) or exc}") from exc
    return from_dict(raw, str(path))
