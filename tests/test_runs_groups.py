"""`gptpipe runs --group-by KEYS --baseline SELECTOR`: runs pooled into groups (n,
mean, sd per metric), compared with a baseline group by Welch's t-test. The
grouping on a hand-made runs_table frame, then the command on a real sqlite
store of six runs (2 lrs x 3 seeds, minus one, plus a lone lr)."""
from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from gptpipe import stats
from gptpipe.errors import UserError
from gptpipe.tracking import runs_groups

PARAMS = ["model.n_embd", "train.lr", "train.seed"]


def _table() -> pd.DataFrame:
    """runs_table's shape: one row per run id; lr logged as MLflow strings, two
    spellings of one value (0.001 and 1e-3)."""
    rows = [  # run, n_embd, lr, seed, bits, loss
        ("a1", "64", "0.001", "1", 2.0, 1.40), ("a2", "64", "1e-3", "2", 2.2, 1.52),
        ("a3", "64", "0.001", "3", 2.4, 1.66),
        ("b1", "64", "0.003", "1", 1.8, 1.25), ("b2", "64", "0.003", "2", 1.9, 1.31),
        ("c1", "64", "0.01", "1", 3.0, 2.10),
    ]
    table = pd.DataFrame(
        [{"run": r, "dvc_experiment": None, "status": "FINISHED", "version": pd.NA,
          "champion": False, "model.n_embd": e, "train.lr": lr, "train.seed": s,
          "val.bits_per_char": bits, "val.loss": loss, "tokens_per_s": 100.0}
         for r, e, lr, s, bits, loss in rows])
    return table.set_index(pd.Index([r[0] for r in rows], name="run_id"))


def test_groups_pool_seeds_with_n_mean_and_sd():
    groups = runs_groups.group_runs(_table(), PARAMS, "train.lr")
    t = groups.table
    assert list(t.index) == ["train.lr=0.003", "train.lr=0.001", "train.lr=0.01"]  # best first
    assert list(t["n"]) == [2, 3, 1]
    assert list(t.columns) == ["n", "val.bits_per_char mean", "val.bits_per_char sd",
                               "val.loss mean", "val.loss sd"]  # the default metrics
    assert t.loc["train.lr=0.001", "val.bits_per_char mean"] == pytest.approx(2.2)
    assert t.loc["train.lr=0.001", "val.bits_per_char sd"] == pytest.approx(0.2)
    assert t.loc["train.lr=0.003", "val.loss sd"] == pytest.approx(math.sqrt(0.0018))
    assert math.isnan(t.loc["train.lr=0.01", "val.bits_per_char sd"])
    assert any("fewer than 2 runs" in note for note in groups.notes)


def test_config_groups_by_every_param_but_the_seed():
    for spec in ("config", ""):
        t = runs_groups.group_runs(_table(), PARAMS, spec).table
        assert sorted(t["n"]) == [1, 2, 3]
        assert t.index[0] == "train.lr=0.003"  # named by the keys that differ


def test_baseline_diff_and_welch_p():
    groups = runs_groups.group_runs(_table(), PARAMS, "train.lr,model.n_embd",
                                    metrics=["val.bits_per_char"], baseline="train.lr=1.0e-3")
    t = groups.table
    assert list(t.columns) == ["n", "baseline", "val.bits_per_char mean",
                               "val.bits_per_char sd", "val.bits_per_char diff",
                               "val.bits_per_char p"]
    assert t["baseline"].tolist() == [False, True, False]
    other = t.loc["train.lr=0.003"]
    expected = stats.welch([1.8, 1.9], [2.0, 2.2, 2.4])
    assert other["val.bits_per_char diff"] == pytest.approx(-0.35)
    assert other["val.bits_per_char p"] == pytest.approx(expected.p) and 0 < expected.p < 0.2
    assert math.isnan(t.loc["train.lr=0.01", "val.bits_per_char p"])  # n = 1
    assert any("Welch" in note and "train.lr=0.001" in note for note in groups.notes)


@pytest.mark.parametrize("selector", ["train.lr=1e-3", "train.lr=0.001", "train.lr=1.0e-3",
                                      " train.lr = 0.0010 "])
def test_a_selector_value_is_compared_as_a_number(selector):
    t = runs_groups.group_runs(_table(), PARAMS, "train.lr", baseline=selector).table
    assert t.loc["train.lr=0.001", "baseline"]


@pytest.mark.parametrize("by, baseline, message", [
    ("train.lrr", None, "--group-by train.lrr: no param train.lrr in these runs (params: "),
    ("train.lr", "train.lr=5e-3", "--baseline train.lr=5e-3: no group has it (groups: "),
    ("train.lr", "model.n_embd=64",
     "--baseline model.n_embd=64: model.n_embd is not a --group-by key (keys: train.lr)"),
    ("train.lr", "0.001", "--baseline 0.001: expected KEY=VALUE"),
    ("train.lr,model.n_embd", "model.n_embd=64", "--baseline model.n_embd=64: 3 groups match"),
])
def test_bad_grouping_is_one_line_naming_the_flag(by, baseline, message):
    with pytest.raises(UserError) as error:
        runs_groups.group_runs(_table(), PARAMS, by, baseline=baseline)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_text_and_markdown_show_dashes_and_notes():
    groups = runs_groups.group_runs(_table(), PARAMS, "train.lr",
                                    metrics=["val.bits_per_char"], baseline="train.lr=0.001")
    markdown = runs_groups.to_markdown(groups).splitlines()
    assert markdown[0] == ("| group | n | baseline | val.bits_per_char mean | "
                           "val.bits_per_char sd | val.bits_per_char diff | val.bits_per_char p |")
    assert markdown[1] == "| --- | ---: | --- | ---: | ---: | ---: | ---: |"
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in markdown[2:5]}
    assert cells["train.lr=0.001"] == ["train.lr=0.001", "3", "yes", "2.2000", "0.2000", "", ""]
    p = stats.welch([1.8, 1.9], [2.0, 2.2, 2.4]).p
    assert cells["train.lr=0.003"] == ["train.lr=0.003", "2", "", "1.8500", "0.0707",
                                       "-0.3500", f"{p:.4f}"]
    assert cells["train.lr=0.01"] == ["train.lr=0.01", "1", "", "3", "-", "+0.8000", "-"]
    assert markdown[5] == "" and markdown[6].startswith("_sd and p: - where")
    text = runs_groups.to_text(groups)
    assert "train.lr=0.01" in text and "Welch" in text


def test_csv_is_full_precision_with_empty_missing_cells():
    groups = runs_groups.group_runs(_table(), PARAMS, "train.lr", baseline="train.lr=0.001")
    frame = pd.read_csv(io.StringIO(runs_groups.to_csv(groups)))
    assert frame["group"].tolist() == ["train.lr=0.003", "train.lr=0.001", "train.lr=0.01"]
    assert frame.loc[0, "val.loss mean"] == pytest.approx(1.28, abs=1e-12)
    assert frame.loc[0, "val.loss sd"] == pytest.approx(math.sqrt(0.0018), rel=1e-12)
    assert frame.loc[0, "val.loss p"] == pytest.approx(
        stats.welch([1.25, 1.31], [1.40, 1.52, 1.66]).p, rel=1e-12)
    assert math.isnan(frame.loc[2, "val.loss sd"]) and math.isnan(frame.loc[1, "val.loss p"])
