"""`gptpipe runs --group-by KEYS [--baseline SELECTOR]`: runs_table's rows pooled
into groups by the values of some params, so the seeds of one config are read
together: per group, how many runs, and each metric's mean and standard
deviation; against a baseline group, the difference of means and Welch's
two-sided p-value (gptpipe.stats).

Values are compared as YAML numbers where they are numbers (1e-3, 1.0e-3 and
0.001 are one value), else as text. A group is named by its keys' values,
`train.lr=0.001,model.n_embd=64`: the form --baseline takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .. import stats
from ..config_id import is_config_key
from ..errors import UserError
from .runs_table import FIRST_COLUMNS, format_value

CONFIG = "config"  # --group-by config: every param that can change a result
DEFAULT_METRICS = ("val.bits_per_char", "val.loss")
NO_SPREAD = "-"


@dataclass
class Groups:
    table: pd.DataFrame            # one row per group, indexed by the group's name
    notes: list[str] = field(default_factory=list)


def group_keys(spec: str, params: list[str]) -> list[str]:
    """The --group-by value as param keys: `config` (or empty) is every param that
    can change a result (gptpipe.config_id: all but train.seed and the settings
    that change nothing); else comma-separated keys, each one a logged param."""
    wanted = [k.strip() for k in spec.split(",") if k.strip()]
    if not wanted or wanted == [CONFIG]:
        return [k for k in params if is_config_key(k)]
    unknown = [k for k in wanted if k not in params]
    if unknown:
        raise UserError(f"--group-by {spec}: no param {', '.join(unknown)} in these runs "
                        f"(params: {', '.join(params) or 'none'})")
    return list(dict.fromkeys(wanted))


def parse_selector(text: str, keys: list[str]) -> dict[str, object]:
    """`--baseline 'train.lr=1.0e-3,model.n_embd=64'` -> {key: comparable value};
    each key must be a --group-by key."""
    selector: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise UserError(f"--baseline {text}: expected KEY=VALUE[,KEY=VALUE...], "
                            f"e.g. --baseline '{keys[0] if keys else 'train.lr'}=1.0e-3'")
        if key not in keys:
            raise UserError(f"--baseline {text}: {key} is not a --group-by key "
                            f"(keys: {', '.join(keys) or 'none'})")
        selector[key] = comparable(value)
    return selector


def comparable(value) -> object:
    """A param value as grouping compares it: numbers by value (YAML's reading,
    or Python's float for PyYAML's strings like 1e-3), else the text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    import yaml

    text = str(value).strip()
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    if isinstance(parsed, bool):
        return parsed
    if isinstance(parsed, (int, float)):
        return float(parsed)
    try:
        return float(text)
    except ValueError:
        return text


def group_runs(table: pd.DataFrame, params: list[str], by: str,
               metrics: list[str] | None = None, baseline: str | None = None) -> Groups:
    """Pool runs_table's rows (`params`: its param columns) by the --group-by `by`.
    `metrics`: the metric columns to summarise (default DEFAULT_METRICS where
    present, else all of the table's). `baseline`: a --baseline selector."""
    params = [c for c in params if c in table.columns]
    keys = group_keys(by, params)
    if metrics is None:
        all_metrics = [c for c in table.columns if c not in FIRST_COLUMNS and c not in params]
        metrics = [m for m in DEFAULT_METRICS if m in all_metrics] or all_metrics
    selector = parse_selector(baseline, keys) if baseline is not None else None

    members: dict[tuple, list[str]] = {}  # comparable values -> run ids
    shown: dict[tuple, tuple] = {}        # comparable values -> the first run's text
    for run_id, row in table[keys].iterrows():
        values = tuple(comparable(row[k]) for k in keys)
        members.setdefault(values, []).append(run_id)
        shown.setdefault(values, tuple("" if v is None else row[k]
                                       for k, v in zip(keys, values)))
    # name a group by the keys that tell the groups apart
    named = [i for i, _ in enumerate(keys) if len({v[i] for v in members}) > 1] \
        or list(range(len(keys)))
    names = {values: ",".join(f"{keys[i]}={shown[values][i]}" for i in named) or "all"
             for values in members}

    base = None
    if selector is not None:
        matches = [v for v in members
                   if all(v[keys.index(k)] == want for k, want in selector.items())]
        if len(matches) != 1:
            found = "no group has it" if not matches else f"{len(matches)} groups match"
            raise UserError(f"--baseline {baseline}: {found} "
                            f"(groups: {'; '.join(names[v] for v in members) or 'none'})")
        base = matches[0]

    def values_of(group: tuple, metric: str) -> list[float]:
        column = table.loc[members[group], metric]
        return [float(v) for v in column if not pd.isna(v)]

    rows, few = [], False
    for group, runs in members.items():
        row: dict[str, object] = {"group": names[group], "n": len(runs)}
        if base is not None:
            row["baseline"] = group == base
        for metric in metrics:
            values = values_of(group, metric)
            row[f"{metric} mean"] = stats.mean(values) if values else math.nan
            row[f"{metric} sd"] = stats.sd(values)
            few = few or len(values) < 2
            if base is not None:
                test = stats.welch(values, values_of(base, metric))
                row[f"{metric} diff"] = math.nan if group == base else test.diff
                row[f"{metric} p"] = math.nan if group == base else test.p
        rows.append(row)
    columns = ["group", "n"] + (["baseline"] if base is not None else [])
    for metric in metrics:
        columns += [f"{metric} {s}" for s in ("mean", "sd")]
        if base is not None:
            columns += [f"{metric} {s}" for s in ("diff", "p")]
    out = pd.DataFrame(rows, columns=columns).set_index("group")
    if metrics:
        out = out.sort_values(f"{metrics[0]} mean", na_position="last", kind="stable")

    notes = []
    if few:
        notes.append(f"sd and p: {NO_SPREAD} where a group has fewer than 2 runs with "
                     "the metric (add seeds: -S train.seed=N)")
    if base is not None:
        notes.append(f"diff: a group's mean minus the baseline's ({names[base]}); "
                     "p: Welch's two-sided t-test, the chance of a difference at least "
                     "this large if the configs were equally good")
    return Groups(out, notes)


def _displayed(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: 4 decimals, signed differences, p to 4 decimals; sd and p are
    NO_SPREAD where they cannot be computed, and empty on the baseline's row."""
    shown = table.reset_index()
    out = shown.apply(lambda column: column.map(format_value)).astype(str)
    is_base = shown["baseline"].tolist() if "baseline" in shown.columns else [False] * len(shown)
    for column in shown.columns:
        kind = column.rsplit(" ", 1)[-1]
        if kind not in ("sd", "diff", "p"):
            continue
        cells = []
        for value, base, text in zip(shown[column], is_base, out[column]):
            if base and kind != "sd":
                cells.append("")
            elif pd.isna(value):
                cells.append("" if kind == "diff" else NO_SPREAD)
            elif kind == "diff":
                cells.append(f"{value:+.4f}")
            elif kind == "p":
                cells.append("<0.0001" if value < 1e-4 else f"{value:.4f}")
            else:
                cells.append(text)
        out[column] = cells
    return out


def to_text(groups: Groups) -> str:
    text = _displayed(groups.table).to_string(index=False)
    return text + "".join(f"\n{note}" for note in groups.notes) + "\n"


def to_markdown(groups: Groups) -> str:
    shown = _displayed(groups.table)
    numeric = [c not in ("group", "baseline") for c in shown.columns]

    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                                 for c in cells) + " |"

    lines = [row(shown.columns), row("---:" if n else "---" for n in numeric)]
    lines += [row(values) for values in shown.itertuples(index=False)]
    lines += [""] + [f"_{note}_" for note in groups.notes] if groups.notes else []
    return "\n".join(lines) + "\n"


def to_csv(groups: Groups) -> str:
    """Full precision; a missing sd or p is an empty cell."""
    return groups.table.reset_index().to_csv(index=False)
