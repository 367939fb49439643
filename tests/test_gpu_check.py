"""`make gpu-check` (gptpipe.gpu_check): the peak table, the MFU arithmetic, the
byte comparison and the report, run on the CPU in a tiny config; and the one line
a machine without CUDA gets."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptpipe import gpu_check
from gptpipe.params import Params
from projects import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PRESET = ROOT / "benchmarks" / "gpu_lecture.yaml"


@pytest.mark.parametrize("name, dtype, expected", [
    ("NVIDIA A100-SXM4-80GB", "bf16", ("A100", 312.0)),
    ("NVIDIA H100 80GB HBM3", "bf16", ("H100", 989.0)),
    ("NVIDIA H100 PCIe", "bf16", ("H100 PCIe", 756.0)),
    ("NVIDIA L4", "bf16", ("L4", 121.0)),
    ("NVIDIA L40S", "bf16", ("L40S", 362.0)),
    ("Tesla T4", "bf16", ("T4", 65.0)),
    ("Tesla T4", "fp32", ("T4", 8.1)),
    ("NVIDIA GeForce GTX 1080", "bf16", None),
    ("cpu", "fp32", None),
])
def test_the_peak_is_looked_up_by_device_name(name, dtype, expected):
    assert gpu_check.peak_tflops(name, dtype) == expected


def test_mfu_is_model_flops_over_the_peak():
    # the lecture's model: 10.79M params, 6 layers, context 256, 384 wide
    per_token = gpu_check.flops_per_token(10_788_929, 6, 256, 384)
    assert per_token == 6 * 10_788_929 + 12 * 6 * 256 * 384
    # 312 TFLOP/s at 40% is 124.8e12 FLOP/s
    tokens_per_s = 0.4 * 312e12 / per_token
    assert gpu_check.mfu(per_token, tokens_per_s, 312.0) == pytest.approx(0.4)


def _report(**over) -> gpu_check.Report:
    fields = dict(device="cuda:0 (NVIDIA A100-SXM4-80GB)", device_name="NVIDIA A100-SXM4-80GB",
                  torch_version="2.13.0", bf16_supported=True, dtype="bf16",
                  dtype_reason="auto: CUDA device with bf16: bf16",
                  model="gpt, 6 layers x 6 heads x 384 wide, context 256", n_params=10_788_929,
                  tokens_per_step=16384, steps=50, timed_steps=48, tokens_per_s=500_000.0,
                  flops_token=gpu_check.flops_per_token(10_788_929, 6, 256, 384),
                  val_loss=2.4567, digests=("ab" * 32, "ab" * 32))
    return gpu_check.Report(**{**fields, **over})


def test_the_report_names_device_bf16_speed_mfu_loss_and_determinism():
    text = "\n".join(_report().lines())
    mfu = 100 * _report().flops_token * 500_000 / 312e12
    for needle in ("cuda:0 (NVIDIA A100-SXM4-80GB)", "supported: yes", "500,000",
                   f"{mfu:.1f}% of 312 TFLOP/s (A100, bf16 dense peak)",
                   "2.4567 after 50 steps", "deterministic  yes"):
        assert needle in text, (needle, text)
    other = "\n".join(_report(device_name="NVIDIA GeForce GTX 1080",
                              digests=("ab" * 32, "cd" * 32)).lines())
    assert "peak unknown, MFU not shown" in other and "%" not in other
    assert "deterministic  no" in other and "abababababab vs cdcdcdcdcdcd" in other


def test_the_preset_is_the_lectures_model():
    p = gpu_check.load_preset(PRESET)
    assert (p.model.n_layer, p.model.n_head, p.model.n_embd, p.model.block_size) == \
        (6, 6, 384, 256)
    assert p.train.batch_size == 64 and isinstance(p, Params)
    tiny = gpu_check.load_preset(PRESET, tiny=True)
    assert tiny.model.n_embd == 32 and tiny.train.threads == 1


def test_the_check_runs_on_cpu_and_compares_two_runs_byte_for_byte(tmp_path):
    """The same path as on a GPU (--device cpu --steps 3 --tiny), as a user runs it."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "3",
                             "--tiny", "--data", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == \
        ["device", "bf16", "model", "tokens/s", "MFU", "val", "deterministic"], lines
    assert "gpu-check: device         cpu, torch " in lines[0]
    assert "peak unknown, MFU not shown" in result.stdout
    assert "deterministic  yes: two runs of 3 steps" in result.stdout
    val = float(next(line for line in lines if " val loss " in line).split()[3])
    assert 0 < val < 10


def test_two_runs_that_differ_are_told_apart():
    """The comparison is of bytes: one flipped bit makes `deterministic: no`."""

    from gptpipe.model import ModelConfig, build

    torch.manual_seed(0)
    model = build(ModelConfig(kind="gpt", vocab_size=20, block_size=8, n_layer=1, n_head=2,
                              n_embd=16))
    first = gpu_check.weights_bytes(model)
    with torch.no_grad():
        weight = next(model.parameters())
        weight.view(-1).view(torch.int32)[0] ^= 1  # the lowest mantissa bit
    second = gpu_check.weights_bytes(model)
    assert gpu_check.digest(first) != gpu_check.digest(second)
    assert gpu_check.digest(first) == gpu_check.digest(dict(first))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == (f"gpu-check: no CUDA device here (torch "
                             f"{torch.__version__}); nothing to check\n")
