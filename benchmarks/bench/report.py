"""The table and BENCHMARKS.md."""
from __future__ import annotations

from .common import SECTIONS, TARGET_VAL, Context, Row, _load


def table(rows: list[Row]) -> str:
    lines = ["| section | benchmark | result | baseline (same command) | ratio | goal |",
             "|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(SECTIONS)}
    for r in sorted(rows, key=lambda r: order.get(r.section, len(order))):  # stable
        cells = [c.replace("|", "\\|") for c in (r.section, r.name, r.result, r.baseline,
                                                   r.ratio, r.goal)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(ctx: Context, info: dict, seconds: float) -> str:
    mode = "--quick (a smoke run: tiny workloads, not measurements)" if ctx.quick else "full"
    out = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run.py` (`make bench`); do not edit by hand.",
        "",
        f"- machine: {info['cpu']} ({info['flags'] or 'no AVX-512'}), {info['cores']} cores, "
        f"torch {info['torch']} (threads: {info['torch_threads']}), Python {info['python']}",
        f"- date: {info['date']}; mode: {mode}; took {seconds:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in ctx.took.items()) + ")",
        f"- load average (1/5/15 min) at start: {info['load']}, at end: {_load()}. The machine "
        "may be shared: compare ratios, which are measured in the same command, rather "
        "than absolute numbers.",
        "",
        table(ctx.rows),
        "",
        "## How",
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
        "no-op `dvc repro` alternates between gptpipe's project and a plain chain of "
        "seven `cp` stages.",
        f"- **loss**: the train stage on tinyshakespeare (char tokenizer, 90/10 split), "
        f"in a temp dir with a temp MLflow store. The time to val loss <= {TARGET_VAL} "
        "is the stage's wall time (start-up, step-0 eval, evals and writing outputs "
        "included) minus the training after the first eval at or below it; `train loop` is "
        "reports/train_history.csv's elapsed_s there. Eval sets hold >= 20 x 12 x 64 "
        "tokens. Each config runs `--repeats` times (default 2), in alternating order; "
        "the median is shown.",
        "- **evaluate**: evaluation.total_nats over the same windows for each variant, "
        "interleaved chunk by chunk.",
        "",
    ]
    if ctx.errors:
        out += ["## Errors", ""] + [f"- {e}" for e in ctx.errors] + [""]
    return "\n".join(out)
