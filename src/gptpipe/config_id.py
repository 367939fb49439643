"""A run's config without its seed: which params decide the trained model, and the
`gptpipe.config` tag naming them, so runs that differ only in train.seed (or in
settings that change no result) share one name: MLflow's UI groups by it, and
`gptpipe runs --group-by config` groups by the same keys.

The tag is "<8 hex> <the params that differ from the defaults>", e.g.
"3f2a91c0 lr=3e-3": the hash is the first 8 hex digits of the sha256 of the
config's canonical JSON; the label lists the keys whose value differs from
params.yaml's shipped defaults (gptpipe.params' dataclasses), by their last part
where that is unique. Both depend on the config alone, never on the machine or
the git revision, so the same config always gets the same tag.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

TAG = "gptpipe.config"
SEED = "train.seed"
# Params that change no result, so never split a group: the seed (the point of a
# group is to pool seeds), how train is run (CPU threads, which move results by
# float rounding only; the launcher; how often it checkpoints: a resume is exact),
# how the corpus is fetched (timeouts, retries, size cap, the expected sha256: checks, not inputs), where MLflow
# records it (mlflow.*), and evaluate.* / sample.*, logged after training (sample
# never touches the val metrics). train.device and train.autocast stay: another
# device or precision gives other numbers.
NEUTRAL = frozenset({SEED, "train.threads", "train.launcher", "train.checkpoint_interval",
                     "data.timeout_s", "data.retries", "data.max_bytes", "data.sha256"})
NEUTRAL_SECTIONS = ("mlflow.", "evaluate.", "sample.")
MAX_LABEL_CHARS = 200


def is_config_key(key: str) -> bool:
    """Whether param `key` (`section.name`) can change what a run measures."""
    return key not in NEUTRAL and not key.startswith(NEUTRAL_SECTIONS)


def config_params(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if is_config_key(k)}


def config_hash(flat: dict[str, Any]) -> str:
    """8 hex digits of the sha256 of the config's canonical JSON (sorted keys)."""
    blob = json.dumps(_canonical(config_params(flat)), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def config_tag(flat: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """"<hash> k=v k=v": `flat` is Params.flat(); `defaults` that of Params()."""
    if defaults is None:
        from .params import Params

        defaults = Params().flat()
    config = config_params(flat)
    label = " ".join(changed_params({k: config[k] for k in sorted(config)}, defaults))
    if len(label) > MAX_LABEL_CHARS:
        label = label[:MAX_LABEL_CHARS - 1] + "…"
    return f"{config_hash(flat)} {label}".rstrip()


def changed_params(flat: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """"name=value" for each key of `flat` (in its order) whose value differs from
    `defaults`, named by its last part where that is unique among `flat`'s keys."""
    names = _short_names(list(flat))
    return [f"{names[k]}={format_param(v)}" for k, v in flat.items()
            if _canonical(v) != _canonical(defaults.get(k, _MISSING))]


def format_param(value: Any) -> str:
    """A value as a person writes it in a sweep: 3e-3, 0.5, 128, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    text = str(value)
    return text if text and " " not in text else json.dumps(text)


_MISSING = object()


def _canonical(value: Any) -> Any:
    """JSON-stable: tuples as lists, integral floats kept as floats (1.0 != 1 in
    the JSON, but the params' types never change between runs)."""
    if isinstance(value, tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _short_names(keys: list[str]) -> dict[str, str]:
    """`train.lr` -> `lr` unless another section has a `lr` too (model.kind and
    tokenizer.kind keep their section)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(keys, last)}
