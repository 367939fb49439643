"""The docs' speed figures are BENCHMARKS.md's: every ratio and time quoted between a
page's speed markers (docs/performance.md, docs/sweeps.md) appears in BENCHMARKS.md,
as written there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "performance.md"
PAGES = {PAGE: 10, ROOT / "docs" / "sweeps.md": 2}  # page: how many figures it quotes, at least
FIGURE = re.compile(r"\b\d+(?:\.\d+)?x\b|\b\d+\.\d+ s\b|\b\d[\d,]*(?:\.\d+)? tok/s\b")


def _speed_block(page: Path = PAGE) -> str:
    text = page.read_text(encoding="utf-8")
    start, end = "<!-- speed: figures from BENCHMARKS.md -->", "<!-- /speed -->"
    assert start in text and end in text, f"{page.name} lost its speed markers"
    return text.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: p.name)
def test_every_speed_figure_is_in_benchmarks_md(page: Path):
    block = _speed_block(page)
    bench = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    figures = FIGURE.findall(block)
    assert len(figures) >= PAGES[page], figures  # the block quotes figures, not prose only
    missing = [f for f in figures if f not in bench]
    assert not missing, f"{page.name} speed figures not in BENCHMARKS.md: {missing}"


def test_performance_page_says_what_to_expect_on_each_kind_of_cpu():
    block = _speed_block()
    for kind in ("AMX", "AVX-512 BF16", "neither"):
        assert kind in block, kind
    # each kind the page names has its own table in BENCHMARKS.md, or says unmeasured
    bench = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## CPU with AMX" in bench
    assert "## CPU with AVX-512 BF16, no AMX" in bench or "AVX-512 BF16: unmeasured" in block
    assert "## CPU without bf16 instructions" in bench or "unmeasured" in block


def test_readme_points_to_the_performance_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/performance.md)" in readme
    assert "<!-- speed" not in readme, "speed figures live in docs/performance.md only"
