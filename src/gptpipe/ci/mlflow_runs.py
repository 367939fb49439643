"""The MLflow side of the report: the champion's run before the job, and the
`gptpipe runs` table of the runs CI shows, through the runs_table functions."""
from __future__ import annotations

from pathlib import Path

from ..tracking import runs_table  # the one import of it in gptpipe.ci


def _settings(params_path: Path):
    from .. import params as params_mod

    if params_path.exists():
        return params_mod.load(params_path).mlflow
    return params_mod.MlflowParams()


def _tracker():
    """A Tracker on the tracking URI, or None when the local store does not exist
    yet (opening it would create it)."""
    from ..tracking.runs import Tracker
    from ..tracking.store import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    return Tracker(uri)


def champion_run(params_path: Path = Path("params.yaml")) -> str | None:
    """The run id the registered model's `champion` alias points at, or None (no
    store, no registered model, no alias, or the store cannot be reached)."""
    try:
        tracker = _tracker()
        if tracker is None:
            return None
        _versions, champion = runs_table.fetch_versions(
            tracker.client, _settings(params_path).registered_model)
        return champion
    except Exception:  # noqa: BLE001 - the report says "none"; training will say why
        return None


def runs_markdown(run_ids: list[str], params_path: Path = Path("params.yaml")) -> str:
    """`gptpipe runs --markdown --run-ids ...`: those runs as a markdown table
    ("" when the experiment has none of them). Raises on a store it cannot read."""
    tracker = _tracker()
    if tracker is None:
        return ""
    settings = _settings(params_path)
    versions, champion = runs_table.fetch_versions(tracker.client, settings.registered_model)
    runs = runs_table.fetch_runs(settings.experiment)
    runs = runs[runs["run_id"].isin([r for r in run_ids if r])]
    table = runs_table.runs_table(runs, versions, champion)
    return "" if table.empty else runs_table.to_markdown(table)
