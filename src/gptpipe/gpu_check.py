"""`make gpu-check`: is this GPU worth training on, in one command.

Trains a preset (benchmarks/gpu_lecture.yaml: the lecture's 6 layers x 6 heads x
384 wide, context 256) for a few steps and reports the device, bf16 support,
tokens/s, MFU against the GPU's peak, the val loss after those steps, and
whether a second run with the same seed gives byte-identical weights. On a
machine without CUDA it says so in one line and exits 0; `--device cpu` runs
the same path on the CPU (with `--tiny`, in seconds: what the tests do).

MFU (model FLOPs utilisation) = FLOPs the model needs per token x tokens/s /
the device's peak. FLOPs per token, forward and backward: 6 N + 12 L T d
(N parameters, L layers, context T, width d: nanoGPT's estimate_mfu after the
PaLM paper, appendix B).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

PROG = "gpu-check"

# Dense peak TFLOP/s (no sparsity) by device-name fragment, first match wins:
# "bf16" for bf16/fp16 tensor cores (T4 has no bf16: its fp16 figure), "fp32" for
# plain fp32 (gptpipe's determinism settings turn TF32 off).
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    ("A10G", {"bf16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp32": 31.2}),
    ("V100", {"bf16": 125.0, "fp32": 15.7}),
    ("T4", {"bf16": 65.0, "fp32": 8.1}),
)


def peak_tflops(device_name: str, dtype: str) -> tuple[str, float] | None:
    """(the table's name, peak TFLOP/s) for a device name and "bf16" or "fp32"."""
    for fragment, peaks in PEAKS:
        if fragment.lower() in device_name.lower():
            return fragment, peaks[dtype]
    return None


def flops_per_token(n_params: int, n_layer: int, block_size: int, n_embd: int) -> float:
    """Training FLOPs per token: 6 N (matmuls, forward and backward) + 12 L T d
    (attention over the context)."""
    return 6.0 * n_params + 12.0 * n_layer * block_size * n_embd


def mfu(flops_token: float, tokens_per_s: float, peak: float) -> float:
    """The fraction of `peak` TFLOP/s that `tokens_per_s` uses."""
    return flops_token * tokens_per_s / (peak * 1e12)


def weights_bytes(model) -> dict[str, bytes]:
    """Every tensor's bytes, by name: two runs compare byte for byte."""
    import torch

    return {k: v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            for k, v in sorted(model.state_dict().items())}


def digest(weights: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, blob in weights.items():
        h.update(name.encode())
        h.update(blob)
    return h.hexdigest()


@dataclass
class Report:
    device: str             # "cuda:0 (NVIDIA A100-SXM4-80GB)" or "cpu"
    device_name: str        # what the peak table is matched against
    torch_version: str
    bf16_supported: bool | None  # None: not a CUDA question (CPU)
    dtype: str              # "bf16" or "fp32": what the run trained in
    dtype_reason: str
    model: str              # "gpt, 6 layers x 6 heads x 384 wide, context 256"
    n_params: int
    tokens_per_step: int
    steps: int
    timed_steps: int
    tokens_per_s: float
    flops_token: float
    val_loss: float
    digests: tuple[str, str]  # the two runs' weights

    @property
    def deterministic(self) -> bool:
        return self.digests[0] == self.digests[1]

    @property
    def peak(self) -> tuple[str, float] | None:
        return peak_tflops(self.device_name, self.dtype)

    def lines(self) -> list[str]:
        bf16 = ("n/a (CPU)" if self.bf16_supported is None
                else "yes" if self.bf16_supported else "no")
        peak = self.peak
        if peak is None:
            mfu_text = "peak unknown, MFU not shown"
        else:
            name, tflops = peak
            mfu_text = (f"{100 * mfu(self.flops_token, self.tokens_per_s, tflops):.1f}% of "
                        f"{tflops:g} TFLOP/s ({name}, {self.dtype} dense peak)")
        same = "yes" if self.deterministic else "no"
        rows = [
            ("device", f"{self.device}, torch {self.torch_version}"),
            ("bf16", f"supported: {bf16}; trained in {self.dtype} ({self.dtype_reason})"),
            ("model", f"{self.model}, {self.n_params / 1e6:.2f}M params, "
                      f"{self.tokens_per_step:,} tokens/step"),
            ("tokens/s", f"{self.tokens_per_s:,.0f} (the last {self.timed_steps} of "
                         f"{self.steps} steps)"),
            ("MFU", f"{mfu_text}; {self.flops_token:.3g} FLOP/token"),
            ("val loss", f"{self.val_loss:.4f} after {self.steps} steps"),
            ("deterministic", f"{same}: two runs of {self.steps} steps, same seed, "
                              f"{'identical' if self.deterministic else 'different'} weights "
                              f"({self.digests[0][:12]}"
                              f"{'' if self.deterministic else ' vs ' + self.digests[1][:12]})"),
        ]
        width = max(len(k) for k, _ in rows)
        return [f"{PROG}: {k:<{width}}  {v}" for k, v in rows]


# The tiny config of --tiny: the same path in seconds on a CPU (the tests).
TINY = {"model": {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32,
                  "dropout": 0.0},
        "train": {"batch_size": 4, "eval_batches": 2, "threads": 1}}


def load_preset(path: Path, tiny: bool = False):
    """The preset's model and train sections (over params.py's defaults), as Params."""
    import yaml

    from .params import from_dict

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw = {k: v for k, v in raw.items() if k in ("model", "train")}
    if tiny:
        for section, values in TINY.items():
            raw[section] = {**raw.get(section, {}), **values}
    return from_dict(raw, str(path))


def load_data(root: Path):
    """(train, val, vocab size): the project's data/split/ when `make run` made it,
    else the embedded plays, char-tokenised, 90/10."""
    import numpy as np

    from .arrays import load_tokens

    train_path, val_path = root / "data/split/train.npy", root / "data/split/val.npy"
    if train_path.exists() and val_path.exists():
        train, val = load_tokens(train_path), load_tokens(val_path)
    else:
        from .sources import embedded_plays_dir

        text = "".join(p.read_text(encoding="utf-8")
                       for p in sorted(embedded_plays_dir().rglob("*.md")))[:2_000_000]
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        tokens = np.unique(codes, return_inverse=True)[1].astype(np.uint16)
        cut = int(len(tokens) * 0.9)
        train, val = tokens[:cut], tokens[cut:]
    vocab = int(max(train.max(), val.max())) + 1
    return train, val, vocab


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(p, device, train, val, vocab: int, steps: int, amp_dtype):
    """A fresh model trained `steps` steps from p.train.seed: (trainer, step times)."""
    from .devices import make_deterministic
    from .model import ModelConfig, build
    from .training import Trainer

    make_deterministic(p.train.seed)
    cfg = ModelConfig(**dataclasses.asdict(p.model), vocab_size=vocab)
    model = build(cfg).to(device)
    trainer = Trainer(model, train, val, p.train, device, amp_dtype)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return trainer, times


def check(p, device, train, val, vocab: int, steps: int) -> Report:
    import torch

    from .devices import choose_autocast
    from .model import count_params

    if p.train.threads:
        torch.set_num_threads(p.train.threads)
    amp = choose_autocast(device, p.train.autocast)
    first, times = train_steps(p, device, train, val, vocab, steps, amp.dtype)
    val_loss = first.estimate_loss()["val"]
    second, _ = train_steps(p, device, train, val, vocab, steps, amp.dtype)
    # The first steps warm up (allocator, kernels' autotuning): time the rest.
    timed = times[2:] if len(times) > 3 else times
    tokens_per_step = p.train.batch_size * p.train.grad_accum * p.model.block_size
    n_params = count_params(first.model)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        shown, bf16 = f"{device} ({name})", torch.cuda.is_bf16_supported()
    else:
        name, shown, bf16 = device.type, device.type, None
    m = p.model
    return Report(
        device=shown, device_name=name, torch_version=torch.__version__,
        bf16_supported=bf16, dtype=amp.name, dtype_reason=amp.reason,
        model=f"{m.kind}, {m.n_layer} layers x {m.n_head} heads x {m.n_embd} wide, "
              f"context {m.block_size}",
        n_params=n_params, tokens_per_step=tokens_per_step, steps=steps,
        timed_steps=len(timed), tokens_per_s=tokens_per_step * len(timed) / sum(timed),
        flops_token=flops_per_token(n_params, m.n_layer, m.block_size, m.n_embd),
        val_loss=val_loss,
        digests=(digest(weights_bytes(first.model)), digest(weights_bytes(second.model))))


def no_cuda_line() -> str:
    import torch

    return f"{PROG}: no CUDA device here (torch {torch.__version__}); nothing to check"


def main(argv: list[str] | None = None, default_preset: Path | None = None) -> None:
    from .errors import UserError

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=default_preset,
                        help="a YAML preset with model: and train: sections")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; without one: say so and exit 0) or cpu")
    parser.add_argument("--steps", type=int, default=50, help="steps per run (two runs)")
    parser.add_argument("--tiny", action="store_true",
                        help="a 1-layer, 32-wide model instead of the preset's: seconds on a CPU")
    parser.add_argument("--data", type=Path, default=Path("."),
                        help="the project whose data/split/ to train on (else the embedded plays)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_cuda_line(), flush=True)
        return
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.preset is None:
        raise UserError("--preset: give a preset YAML (benchmarks/gpu_lecture.yaml)")
    p = load_preset(args.preset, tiny=args.tiny)
    train, val, vocab = load_data(args.data)
    report = check(p, torch.device(args.device), train, val, vocab, args.steps)
    print("\n".join(report.lines()), flush=True)
