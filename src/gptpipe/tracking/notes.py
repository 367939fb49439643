"""What MLflow's UI shows about a run in words: its name when DVC gives none, and
its Description (the `mlflow.note.content` tag), copied onto its registered
model version.

The Description is rebuilt whole from the run's params, tags and metrics each
time a stage learns something (train: the model, the data, the kept step;
evaluate: val bits/char; sample: a sample's first line), so reruns never append.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .store import retry_locked

if TYPE_CHECKING:
    from .runs import Tracker

NOTE_TAG = "mlflow.note.content"  # the run page's Description
# the facts the stages record for the Description
PARAMETERS_TAG, SOURCE_TAG = "gptpipe.parameters", "gptpipe.data_source"
TOKENS_TAG, KEPT_STEP_TAG = "gptpipe.tokens", "gptpipe.kept_step"
SAMPLE_TAG = "gptpipe.sample_first_line"
REGISTERED_MODEL_DESCRIPTION = (
    "Karpathy's char-level GPT, trained by gptpipe's DVC pipeline: one version per "
    "trained model. The alias `champion` is the version with the lowest val "
    "bits/char among the models measured on the same val data.")
# train params that change no weights: left out of run names
_NAME_PARTS = 4


def run_name(p) -> str:
    """A short, deterministic name for a run DVC does not name: the model and train
    params of its config (config_id.py) and its seed that differ from gptpipe's
    defaults ("lr=3e-3 seed=2"), or "baseline"."""
    from ..config_id import SEED, changed_params, is_config_key
    from ..params import Params

    # train first: lr, seed, max_iters are what sweeps change
    ours = {k: v for k, v in {**p.flat(("train",)), **p.flat(("model",))}.items()
            if k == SEED or is_config_key(k)}
    parts = changed_params(ours, Params().flat(("train", "model")))
    if not parts:
        return "baseline"
    extra = len(parts) - _NAME_PARTS
    return " ".join(parts[:_NAME_PARTS]) + (f" +{extra}" if extra > 0 else "")


def description(run) -> str:
    """The run's Description (markdown), from what its stages recorded so far."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    lines = []
    if "model.kind" in params:
        size = f"{_count(params.get('model.n_layer'), 'layer')} × " \
               f"{_count(params.get('model.n_head'), 'head')} × {params.get('model.n_embd')} wide"
        count = tags.get(PARAMETERS_TAG)
        count = f", {int(count) / 1e6:.2f}M params" if count else ""
        lines.append(f"**Model**: {params['model.kind']}, {size}{count}, context "
                     f"{params.get('model.block_size')}")
    if SOURCE_TAG in tags:
        tokens = f", {tags[TOKENS_TAG]} tokens" if TOKENS_TAG in tags else ""
        lines.append(f"**Data**: {tags[SOURCE_TAG]}{tokens}")
    if KEPT_STEP_TAG in tags:
        best = metrics.get("best_val_step")
        best = f" (best val_loss {metrics['best_val_loss']:.4f} at step {int(best)})" \
            if best is not None and "best_val_loss" in metrics else ""
        lines.append(f"**Weights**: step {tags[KEPT_STEP_TAG]}{best}")
    if "val.bits_per_char" in metrics:
        loss = f" (val loss {metrics['val.loss']:.4f})" if "val.loss" in metrics else ""
        lines.append(f"**val bits/char**: {metrics['val.bits_per_char']:.4f}{loss}")
    if tags.get(SAMPLE_TAG):
        lines.append(f"**Sample**: `{tags[SAMPLE_TAG]}`")
    return "  \n".join(lines)


def _count(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if str(n) == "1" else "s")


def first_line(text: str, limit: int = 80) -> str:
    """A sample's first non-blank line, shortened, for the Description."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return (line[:limit - 1] + "…" if len(line) > limit else line).replace("`", "'")


def describe(tracker: Tracker, run_id: str, facts: dict | None = None) -> str:
    """Record `facts` (tags) on the run, then rebuild its Description, and that of
    its registered model version (and the registered model's, when it has none)."""
    client = tracker.client
    if facts:
        tracker.set_tags(run_id, facts)
    note = description(retry_locked(client.get_run, run_id))
    tracker.set_tags(run_id, {NOTE_TAG: note})
    found = retry_locked(client.search_model_versions, f"run_id = '{run_id}'")
    for version in found:
        if version.description != note:
            retry_locked(client.update_model_version, version.name, version.version,
                         description=note)
        model = retry_locked(client.get_registered_model, version.name)
        if not model.description:
            retry_locked(client.update_registered_model, version.name,
                         description=REGISTERED_MODEL_DESCRIPTION)
    return note
