"""`gptpipe runs`: an experiment's MLflow runs as one pandas table.

One row per run: its name, the DVC experiment it came from, its registered model
version and whether that version is the `champion`, the params that differ between
the runs shown, and each metric's last value. MLflow-only code; the cli prints
the table as text, CSV or markdown.
"""
from __future__ import annotations

import fnmatch
import math

import numpy as np
import pandas as pd

from ..errors import UserError
from .registry import CHAMPION
from .runs import DVC_EXPERIMENT_TAG
from .store import redact_uri, retry_locked

DEFAULT_SORT = "val.bits_per_char"
# Logged at every step: their last value says little about a run.
PER_STEP_METRICS = ("batch_loss", "lr")
FIRST_COLUMNS = ["run", "dvc_experiment", "status", "version", "champion"]


def fetch_runs(experiment: str) -> pd.DataFrame:
    """mlflow.search_runs of one experiment (the tracking URI is set by Tracker)."""
    import mlflow

    exp = retry_locked(mlflow.get_experiment_by_name, experiment)
    if exp is None:
        names = sorted(e.name for e in retry_locked(mlflow.search_experiments))
        raise UserError(f"experiment '{experiment}' not found in "
                        f"{redact_uri(mlflow.get_tracking_uri())} "
                        f"(experiments: {', '.join(names) or 'none'})")
    return retry_locked(mlflow.search_runs, experiment_ids=[exp.experiment_id],
                        output_format="pandas", order_by=["attributes.start_time DESC"])


def fetch_versions(client, model_name: str) -> tuple[dict[str, int], str | None]:
    """The newest version of `model_name` per run id, and the run id the `champion`
    alias points at. No registered model (or no alias) yet: empty, None."""
    versions: dict[str, int] = {}
    try:
        for version in client.search_model_versions(f"name='{model_name}'"):
            if version.run_id:
                versions[version.run_id] = max(int(version.version),
                                               versions.get(version.run_id, 0))
    except Exception:  # noqa: BLE001 - no registry in this store: no versions
        return {}, None
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION).run_id
    except Exception:  # noqa: BLE001 - MlflowException: no such model or alias
        champion = None
    return versions, champion


def runs_table(runs: pd.DataFrame, versions: dict[str, int] | None = None,
               champion_run: str | None = None, sort: str | None = None,
               descending: bool = False, all_params: bool = False,
               metric_patterns: list[str] | None = None) -> pd.DataFrame:
    """Shape mlflow.search_runs' frame into one row per run, indexed by run id.

    Params come from `params.<key>`, or the `current.<key>` tag where a stage reran
    into the run with a new value. Only params whose values differ between the rows
    are kept, unless `all_params`. Metrics are all but the `system/*` and per-step
    ones, or those matching one of `metric_patterns` (fnmatch: `val.*`). `sort` names
    a column (a metric, a param or one of FIRST_COLUMNS); missing values go last."""
    versions = versions or {}
    table = pd.DataFrame(index=pd.Index(runs.get("run_id", pd.Series(dtype=str)), name="run_id"))
    table["run"] = _column(runs, "tags.mlflow.runName")
    table["dvc_experiment"] = _column(runs, f"tags.{DVC_EXPERIMENT_TAG}")
    table["status"] = _column(runs, "status")
    table["version"] = pd.array([versions.get(r) for r in table.index], dtype="Int64")
    table["champion"] = [r == champion_run for r in table.index]

    params = pd.DataFrame(index=table.index)
    for column in sorted(c for c in runs.columns if c.startswith("params.")):
        key = column[len("params."):]
        values = _column(runs, column)
        current = _column(runs, f"tags.current.{key}")
        params[key] = [c if isinstance(c, str) else v for v, c in zip(values, current)]
    if not all_params:
        params = params.loc[:, [c for c in params.columns if _differs(params[c])]]
    metrics = pd.DataFrame(index=table.index)
    for column in sorted(c for c in runs.columns if c.startswith("metrics.")):
        key = column[len("metrics."):]
        if metric_patterns is not None:
            if not any(fnmatch.fnmatchcase(key, pattern) for pattern in metric_patterns):
                continue
        elif key.startswith("system/") or key in PER_STEP_METRICS:
            continue
        metrics[key] = pd.to_numeric(pd.Series(_column(runs, column), dtype=object),
                                     errors="coerce").to_numpy(dtype=float)
    params = params.loc[:, [c for c in params.columns if c not in metrics.columns]]
    table = pd.concat([table, params, metrics], axis=1)

    if sort is None:
        sort = DEFAULT_SORT if DEFAULT_SORT in table.columns else None
    if sort is not None:
        if sort not in table.columns:
            known = ", ".join(metrics.columns) or "none yet"
            raise UserError(f"--sort {sort}: no such column (metrics: {known})")
        if sort in metrics.columns:  # the sort metric first among the metrics
            ordered = [c for c in table.columns if c != sort]
            ordered.insert(len(table.columns) - len(metrics.columns), sort)
            table = table[ordered]
        table = table.sort_values(sort, ascending=not descending, na_position="last",
                                  kind="stable")
    return table


def format_value(value) -> str:
    """Numbers as a person reads them: 4 decimals, thousands grouped; empty for none."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def to_text(table: pd.DataFrame) -> str:
    shown = _displayed(table)
    return shown.to_string(index=False)


def to_csv(table: pd.DataFrame) -> str:
    return table.reset_index().to_csv(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    shown = _displayed(table)
    numeric = [pd.api.types.is_numeric_dtype(table.reset_index()[c])
               and not pd.api.types.is_bool_dtype(table.reset_index()[c]) for c in shown.columns]

    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                                 for c in cells) + " |"

    lines = [row(shown.columns), row("---:" if n else "---" for n in numeric)]
    lines += [row(values) for values in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _displayed(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.reset_index()
    return shown.apply(lambda column: column.map(format_value)).astype(str)


def _column(runs: pd.DataFrame, name: str) -> list:
    if name not in runs.columns:
        return [None] * len(runs)
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v
            for v in runs[name].tolist()]


def _differs(values: pd.Series) -> bool:
    """Two runs set it to different values (a run without the key, e.g. not evaluated
    yet, says nothing about it)."""
    return values.dropna().astype(str).nunique() > 1
