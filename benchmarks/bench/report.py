"""The table and BENCHMARKS.md."""
from __future__ import annotations

from .common import (LOSS_REPEATS, NOOP_ROUNDS, REF_SECONDS, SECTIONS, TARGET_VAL, Context, Row,
                     _load)


def table(rows: list[Row]) -> str:
    lines = ["| section | benchmark | result | baseline (same command) | ratio | goal |",
             "|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(SECTIONS)}
    for r in sorted(rows, key=lambda r: order.get(r.section, len(order))):  # stable
        cells = [c.replace("|", "\\|") for c in (r.section, r.name, r.result, r.baseline,
                                                   r.ratio, r.goal)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADER = [
    "# Benchmarks",
    "",
    "Written by `python benchmarks/run.py` (`make bench`); do not edit by hand. One "
    "section per kind of machine it has run on: a run replaces its own kind's section "
    "and keeps the others.",
    "",
]


def machine_section(ctx: Context, info: dict, seconds: float) -> list[str]:
    mode = "--quick (a smoke run: tiny workloads, not measurements)" if ctx.quick else "full"
    out = [
        f"## {info['kind']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"(threads: {info['torch_threads']}), Python {info['python']}",
        f"- CPU features seen: {info['features']}",
        f"- `train.autocast: auto` chose **{info['autocast']}**: {info['autocast_reason']}",
        f"- date: {info['date']}; mode: {mode}; took {seconds:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in ctx.took.items()) + ")",
        f"- load average (1/5/15 min) at start: {info['load']}, at end: {_load()}. The machine "
        "may be shared: compare ratios, which are measured in the same command, rather "
        "than absolute numbers.",
        "",
        table(ctx.rows),
        "",
    ]
    if ctx.errors:
        out += ["Errors:", ""] + [f"- {e}" for e in ctx.errors] + [""]
    return out


# benchmarks/finetune.py writes its section between these markers; a table run keeps it
FINETUNE_BEGIN = "<!-- benchmarks/finetune.py: begin -->"
FINETUNE_END = "<!-- benchmarks/finetune.py: end -->"
MACHINE_HEADING = "## CPU"  # every machine kind's section (common.machine_kind) starts so


def kept_parts(existing: str, kind: str) -> tuple[list[str], str]:
    """From an existing BENCHMARKS.md: the sections of other machine kinds, verbatim,
    and finetune.py's block (its first, if a bad merge left several). The "How"
    section is not kept: markdown writes it anew."""
    block = ""
    if FINETUNE_BEGIN in existing and FINETUNE_END in existing:
        block = (FINETUNE_BEGIN + existing.split(FINETUNE_BEGIN, 1)[1].split(FINETUNE_END, 1)[0]
                 + FINETUNE_END)
    sections, current, in_block = [], None, False
    for line in existing.splitlines():
        if line.strip() == FINETUNE_BEGIN:
            in_block, current = True, None
        elif line.strip() == FINETUNE_END:
            in_block = False
            continue
        if in_block:
            continue
        if line.startswith("## "):
            other_kind = line.startswith(MACHINE_HEADING) and line[3:].strip() != kind
            current = [] if other_kind else None
            if current is not None:
                sections.append(current)
        if current is not None:
            current.append(line)
    while sections and sections[-1] and not sections[-1][-1].strip():
        sections[-1].pop()  # the blank lines before whatever followed
    return [line for section in sections for line in section], block


def markdown(ctx: Context, info: dict, seconds: float, existing: str = "") -> str:
    out = HEADER + machine_section(ctx, info, seconds)
    others, finetune_block = kept_parts(existing, info["kind"])
    if others:
        out += others + [""]
    out += how_section()
    if finetune_block:
        out += [finetune_block, ""]
    return "\n".join(out)


def how_section() -> list[str]:
    return [
        "## How (every machine)",
        "",
        "- **ratio** is result / baseline, both measured by this command (for times, "
        "below 1 is faster; for rates, above 1 is faster).",
        "- **throughput**: Trainer.train_step at the reference config on random tokens, "
        "variants interleaved step by step, medians; the plain step is nanoGPT's (fp32, "
        "for-each AdamW, default clipping). MFU = (6 x matmul params + 12 x layers x width "
        "x context) FLOPs per token x tokens/s / the best fp32 2048² matmul of this "
        "command. torch.compile runs in a subprocess with an empty inductor cache.",
        "- **sampling**: sampling.stream, greedy, from a 1-token prompt, with and without "
        "the cache in lockstep (one token each in turn); the context slides to its newest "
        "half when it reaches 256 tokens. The random model's head is scaled up so greedy "
        "choices are not decided by rounding.",
        "- **stages**: each stage script run as DVC would run it, in a temp project; "
        "seconds are wall time including Python start-up, peak RSS from wait4. The "
        "no-op `dvc repro` alternates between gptpipe's project, a plain chain of "
        "as many `cp` stages, that chain with as many file deps per stage as gptpipe's "
        "stages list (DVC's own cost per dep), and a copy of gptpipe's project whose "
        "stages list the `src/gptpipe` folder in place of their modules (recorded with "
        f"`dvc commit`), {NOOP_ROUNDS} rounds; `dvc status --json` confirms each ran "
        "nothing.",
        f"- **loss**: the train stage on tinyshakespeare (char tokenizer, 90/10 split), "
        f"in a temp dir with a temp MLflow store. The time to val loss <= {TARGET_VAL} "
        "is the stage's wall time (start-up, step-0 eval, evals and writing outputs "
        "included) minus the training after the crossing. Baseline and recipe find the "
        "crossing the same way: linear interpolation of the eval loss between the last eval "
        "above the target and the first at or below it, in reports/train_history.csv's "
        "elapsed_s (`train loop`). The crossing is confirmed with the loss over the whole "
        "val split of each seed's model at that first eval (retrained to that step "
        "in-process, same seed, unless it is the final model). Eval sets hold >= 20 x 12 x "
        f"64 tokens. Each config runs once per seed, `--repeats` seeds (default {LOSS_REPEATS}: "
        "train.seed 1337, 1338, ...), configs in alternating order; the median and the "
        "spread (min-max) over the seeds are shown, and the recipe's goal is judged on its "
        "median over the seeds against the baseline's median, every seed confirmed (the "
        "slowest seed shown beside it). Goals are judged only against the "
        "baseline of the same command; "
        f"nanoGPT's own {REF_SECONDS:.0f} s (another machine and day) is context.",
        "- **start-up**: the train stage prints when its first optimizer step is done, "
        "in seconds since its process started (/proc); MLflow opens meanwhile in a "
        "process of its own under SCHED_IDLE (tracking/process.py).",
        "- **firststeps**: the recipe's train stage on tinyshakespeare, `--repeats` runs: "
        "the tokens/s of steps 1-100 over the median of the later 100-step intervals "
        "(reports/train_history.csv, evals excluded), and that median over the same "
        "params' Trainer.train_step timed in the benchmark's process on the same data "
        "right before and right after each run.",
        "- **emulated kinds**: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 make bench` "
        "caps torch's kernels at AVX2 on a bf16-capable CPU: its section is that of a CPU "
        "without bf16 instructions, marked as emulated.",
        "- **evaluate**: evaluation.total_nats over the same windows for each variant, "
        "interleaved chunk by chunk.",
        "- **sweep**: docs/sweeps.md's recipe in two identical temp projects (git, DVC, a "
        "sqlite MLflow store each), the data stages run and committed first; the wall time "
        "is from `dvc queue start -j N` to the last experiment's end (`dvc queue status`). "
        "train.threads 0: the stages split the cores between the workers.",
        "",
    ]
