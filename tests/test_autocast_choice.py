"""train.autocast auto decides by CPU features and a cached bf16 matmul probe,
not by CPU brand (gptpipe/cpu_features.py, devices.choose_autocast)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptpipe import cpu_features
from gptpipe.cpu_features import CpuFeatures, cached_speedup, choose_bf16
from gptpipe.devices import choose_autocast

AMX = CpuFeatures("Xeon with AMX", amx=True, avx512_bf16=True, avx2=True)
ZEN = CpuFeatures("EPYC Zen 5", amx=False, avx512_bf16=True, avx2=True)
AVX2 = CpuFeatures("laptop", amx=False, avx512_bf16=False, avx2=True)


@pytest.mark.parametrize("features, speedup, bf16", [
    (AMX, 6.0, True),      # AMX tiles: bf16
    (ZEN, 4.3, True),      # AVX-512 BF16 without AMX: bf16 too, measured fast
    (ZEN, 1.1, False),     # bf16 instructions, but the probe finds little gain: fp32
    (AVX2, None, False),   # no bf16 instructions: fp32, not even probed
])
def test_auto_picks_bf16_only_with_bf16_instructions_and_a_fast_probe(features, speedup, bf16):
    chosen, reason = choose_bf16(features, speedup)
    assert chosen is bf16
    assert reason.endswith("bf16" if bf16 else "fp32"), reason
    if speedup is not None:
        assert f"{speedup:.1f}x" in reason  # the measurement is part of the why


def test_the_probe_runs_once_per_machine_and_its_cached_result_is_used(tmp_path: Path):
    calls = []

    def probe() -> float:
        calls.append(1)
        return 3.21

    path = tmp_path / "cache" / "bf16-probe.json"
    assert cached_speedup(ZEN, probe, path) == (3.21, False)
    assert cached_speedup(ZEN, probe, path) == (3.21, True)
    assert len(calls) == 1
    # another CPU (or torch) measures again, and keeps the first machine's entry
    assert cached_speedup(AMX, lambda: 6.5, path) == (6.5, False)
    entries = json.loads(path.read_text())
    assert len(entries) == 2 and all(str(torch.__version__) in key for key in entries)
    # a broken cache file is measured over, not an error
    path.write_text("{not json")
    assert cached_speedup(ZEN, lambda: 2.0, path) == (2.0, False)


@pytest.mark.parametrize("cached, expect_bf16", [(9.0, True), (1.0, False)])
def test_auto_on_this_cpu_follows_the_cached_probe(tmp_path: Path, monkeypatch, cached,
                                                   expect_bf16):
    monkeypatch.setenv("GPTPIPE_CACHE_DIR", str(tmp_path))
    features = cpu_features.cpu_features()
    (tmp_path / "bf16-probe.json").write_text(json.dumps(
        {cpu_features.cache_key(features): {"bf16_matmul_speedup": cached}}))
    cpu_features.cpu_bf16_choice.cache_clear()
    try:
        choice = choose_autocast(torch.device("cpu"), "auto")
    finally:
        cpu_features.cpu_bf16_choice.cache_clear()
    if not features.has_bf16_instructions:
        assert choice.dtype is None and "no bf16 instructions" in choice.reason
        return
    assert (choice.dtype == torch.bfloat16) is expect_bf16, choice
    assert f"{cached:.1f}x" in choice.reason


def test_off_and_bf16_are_taken_as_asked():
    cpu = torch.device("cpu")
    assert choose_autocast(cpu, "off").dtype is None
    assert choose_autocast(cpu, "off").name == "fp32"
    assert choose_autocast(cpu, "bf16").dtype == torch.bfloat16
    assert choose_autocast(cpu, "bf16").name == "bf16"


def _features_in_a_subprocess(env: dict) -> dict:
    import os
    import subprocess
    import sys

    code = ("import json; from gptpipe.cpu_features import cpu_features, cache_key; "
            "f = cpu_features(); print(json.dumps({'bf16': f.has_bf16_instructions, "
            "'cap': f.isa_cap, 'key': cache_key(f), 'describe': f.describe()}))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_capped_instruction_set_is_not_taken_for_the_cpu_s_and_has_its_own_probe():
    """ONEDNN_MAX_CPU_ISA=AVX2 sends bf16 matmuls to slow reference code even on a
    CPU with bf16 instructions (~100x slower here): auto must not reuse the
    uncapped probe's verdict."""
    plain = _features_in_a_subprocess({"ONEDNN_MAX_CPU_ISA": "", "ATEN_CPU_CAPABILITY": ""})
    capped = _features_in_a_subprocess({"ONEDNN_MAX_CPU_ISA": "avx2",
                                        "ATEN_CPU_CAPABILITY": "avx2"})
    assert plain["cap"] == ""
    assert capped["cap"] == "ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=AVX2"
    assert capped["bf16"] is False  # no bf16 instructions usable: fp32, no probe
    assert capped["key"] != plain["key"] and "capped: ONEDNN_MAX_CPU_ISA=AVX2" in capped["describe"]
    # a cap that keeps bf16 (or no cap) leaves the CPU's own answer
    bf16_cap = _features_in_a_subprocess({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
                                          "ATEN_CPU_CAPABILITY": ""})
    assert bf16_cap["bf16"] is plain["bf16"]
