"""What every section shares: the reference figures, the presets, the
benchmark context (its rows and measurements), ratios and goals, the machine."""
from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "benchmarks"
BASELINE_PRESET = HERE / "nanogpt_baby.yaml"
RECIPE_PRESET = HERE / "tinyshakespeare.yaml"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

TARGET_VAL = 1.8857       # the reference val loss measured for nanoGPT's baby GPT
# Context only, never a ratio's denominator (those are measured in the same command):
REF_SECONDS = 106.0       # nanoGPT's own run to that loss, another machine and day
REF_TOKENS_S = 16_400     # its median training throughput
# seeds per config in the loss section: the baseline misses the loss on 1 in 3 to 2 in 5
# seeds, so 3 leave its median to chance
LOSS_REPEATS = 5
REF_NOOP_S = 0.77         # no-op `dvc repro` of a 7-stage chain
NOOP_ROUNDS = 9           # interleaved no-op `dvc repro` rounds (--quick: 2)
MIN_EVAL_TOKENS = 20 * 12 * 64  # eval_batches * batch_size * block_size of the reference
SECTIONS = ("peak", "throughput", "sampling", "stages", "firststeps", "loss", "dvc", "evaluate",
            "sweep", "tokenizers")
# init first: train reads its models/init/ (placeholders when training from scratch)
STAGE_SCRIPTS = {"init": "init_model.py", "download": "download.py", "clean": "clean.py",
                 "tokenize": "tokenize_text.py", "split": "split.py", "train": "train.py",
                 "evaluate": "evaluate.py", "sample": "sample.py"}
DATA_STAGES = ("download", "clean", "tokenize", "split")

# Tiny settings for --quick and for the stage runs that only need the pipeline
# to go through (their train/evaluate/sample rows measure start-up and memory).
TINY = {"model": {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {"batch_size": 8, "max_iters": 20, "eval_interval": 10, "eval_batches": 2,
                  "checkpoint_interval": 10, "warmup_iters": 5},
        "evaluate": {"batch_size": 1024},
        "sample": {"prompts": ["\n"], "num_samples": 1, "max_new_tokens": 40},
        "mlflow": {"log_model": False}}


# -- the table -------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    name: str
    result: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""


@dataclass
class Context:
    quick: bool
    tmp: Path
    python: str = sys.executable
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    peak_fp32: float | None = None       # GFLOP/s, measured in this command
    corpus: Path | None = None           # tinyshakespeare, when available
    eval_model: Path | None = None       # a trained model.pt (the baseline's if run)
    # measure.Measured and measure.Project (measure.py builds on this module)
    bare: object | None = None           # `python -c pass`
    imports: object | None = None        # `python -c "import torch, mlflow"`
    shakes: object | None = None         # the tinyshakespeare project
    dvc_project: object | None = None

    machine: dict = field(default_factory=dict)  # machine(): the CPU, its features
    took: dict = field(default_factory=dict)  # seconds per section
    repeats: int = 1                          # runs of each config in the loss section
    data_stages_only: bool = False  # stages only as the projects of --only loss/dvc/...

    def judge(self, text: str, met: bool | None) -> str:
        return f"{text}: judged in the full run" if self.quick else goal(text, met)

    def add(self, *args, **kwargs) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(f"  {row.name}: {row.result}" + (f"  [{row.ratio}]" if row.ratio else ""),
              flush=True)


def ratio(x: float | None, base: float | None, digits: int = 2) -> str:
    if x is None or base is None or base == 0 or not math.isfinite(x) or not math.isfinite(base):
        return "n/a"
    return f"{x / base:.{digits}f}x"


def goal(text: str, met: bool | None) -> str:
    if met is None:
        return f"{text}: n/a"
    return f"{text}: {'met' if met else 'NOT met'}"


def median(values) -> float:
    return float(statistics.median(values))


# -- the machine -----------------------------------------------------------------------

def machine() -> dict:
    """The CPU, its bf16-relevant features, and what train.autocast auto chose here."""
    import torch

    from gptpipe.cpu_features import cpu_features
    from gptpipe.devices import choose_autocast

    features = cpu_features()
    choice = choose_autocast(torch.device("cpu"), "auto")
    yes_no = {True: "yes", False: "no"}
    return {"cpu": features.model, "kind": machine_kind(features),
            "features": f"AMX {yes_no[features.amx]}, AVX-512 BF16 "
                        f"{yes_no[features.avx512_bf16]}, AVX2 {yes_no[features.avx2]}"
                        + (f" (as capped by {features.isa_cap})" if features.isa_cap else ""),
            "bf16_instructions": features.has_bf16_instructions,
            "autocast": choice.name, "autocast_reason": choice.reason,
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "load": _load()}


def machine_kind(features) -> str:
    """BENCHMARKS.md keeps one table per kind of machine."""
    if features.amx:
        return "CPU with AMX"
    if features.avx512_bf16:
        return "CPU with AVX-512 BF16, no AMX"
    kind = "CPU without bf16 instructions" + (" (AVX2)" if features.avx2 else "")
    # ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY caps: another kind, emulated on this CPU
    return f"{kind}, emulated by capping torch: {features.isa_cap}" if features.isa_cap else kind


def _load() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    return "n/a"


# In --quick the runs keep their code paths but shrink to a few steps of a tiny model.
QUICK_TRAIN = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
               "train": {"max_iters": 20, "eval_interval": 10, "checkpoint_interval": 10,
                         "eval_batches": 2},
               "evaluate": {"batch_size": 1024}, "sample": {"max_new_tokens": 40}}
