"""The job summary of a CI retraining, as markdown, from plain data: what ran,
where the outputs and the runs went, the metrics and params diffs (as
`dvc metrics diff --json` and `dvc params diff --json` give them), the MLflow
runs and the loss curves. No git, DVC or MLflow here: tests feed it dicts."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..tracking.store import redact_uri

TITLE = "# Retraining report"
MISSING = "-"      # a value one side does not have, as DVC shows it
PRECISION = 5      # decimals of metrics, as `dvc metrics diff` rounds them
NO_REMOTE_WARNING = ("no DVC remote is configured: the outputs of this dvc.lock cannot "
                     "be pulled by anyone")


@dataclass
class Runs:
    """The MLflow runs: the one this job made (None: none, the model is the
    base's), the base's, the champion before the job, and the `gptpipe runs`
    markdown table of them (or why there is none)."""
    new: str | None = None
    base: str | None = None
    champion_before: str | None = None
    table: str | None = None
    error: str | None = None


@dataclass
class Curves:
    """What was drawn: `path` (the PNG) and whether the base's curves are on it;
    or `error`, why it could not be drawn; neither: there is no train_losses.csv."""
    path: str | None = None
    with_base: bool = False
    error: str | None = None


@dataclass
class Report:
    base: str = ""                  # the revision diffed against; "" = none
    base_sha: str | None = None     # its short sha
    head_sha: str = "none"
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    unwatched_source: str | None = None   # data.source (redacted), when DVC cannot watch it
    remote: str | None = None       # "DVC remote 'name' (url)", None: no remote configured
    pushed: bool = False            # outputs and run cache pushed to it
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI; None: the sqlite mlflow.db
    metrics: dict | str = field(default_factory=dict)  # the diff, or why there is none
    params: dict | str = field(default_factory=dict)
    runs: Runs = field(default_factory=Runs)
    curves: Curves = field(default_factory=Curves)


def describe_remote(name: str, url: str) -> str:
    return f"DVC remote '{name}' ({redact_uri(url)})"


def describe_tracking(uri: str | None) -> str:
    return redact_uri(uri) if uri else "mlflow.db (sqlite; no MLFLOW_TRACKING_URI)"


def format_value(value, precision: int | None = None) -> str:
    """A cell as DVC prints it: '-' for a missing value, floats rounded."""
    if value is None:
        return MISSING
    if isinstance(value, float) and precision:
        return str(round(value, precision))
    return str(value)


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                             for c in cells) + " |"


def diff_table(diff: dict | str, kind: str, base: str) -> str:
    """The markdown table of a metrics or params diff (`kind`: "metrics" or
    "params"): Path | Metric | BASE | workspace | Change (params: no Change); a
    note when nothing changed, when there is no base, or when the diff failed."""
    if not base:
        return "_No base revision to compare with._"
    if isinstance(diff, str):
        return f"_`dvc {kind} diff` failed: {diff}_"
    rows = [(path, name, change) for path, changes in diff.items()
            for name, change in sorted(changes.items())]
    if not rows:
        return f"_No {kind} changed against `{base}`._"
    metrics = kind == "metrics"
    precision = PRECISION if metrics else None
    header = ["Path", "Metric" if metrics else "Param", base, "workspace"]
    lines = [_row(header + (["Change"] if metrics else [])),
             _row(["---"] * (len(header) + metrics))]
    for path, name, change in rows:
        cells = [path, name, format_value(change.get("old"), precision),
                 format_value(change.get("new"), precision)]
        if metrics:
            cells.append(format_value(change.get("diff"), precision))
        lines.append(_row(cells))
    return "\n".join(lines)


def runs_section(runs: Runs) -> str:
    if not runs.new or runs.new == runs.base:
        return "_No new MLflow run: the model is the base's._"
    head = (f"New run `{runs.new}`; the base's run: `{runs.base or 'none'}`; the champion "
            f"before this job: `{runs.champion_before or 'none'}`.")
    if runs.error:
        body = f"_`gptpipe runs` failed: {' '.join(runs.error.split())}_"
    elif runs.table:
        body = runs.table.rstrip("\n")
    else:
        body = "_`gptpipe runs` found none of these runs in the experiment._"
    return f"{head}\n\n{body}"


def curves_section(curves: Curves) -> str:
    if curves.error:
        return f"_Could not draw the loss curves: {' '.join(curves.error.split())}_"
    if not curves.path:
        return "_No loss curves: no reports/train_losses.csv._"
    text = f"Loss curves (base dashed, new solid): `{curves.path}`"
    if not curves.with_base:
        text += "\n\n_The base has no committed reports/train_losses.csv: the new curves alone._"
    return text


def push_line(report: Report) -> str:
    if report.remote is None:
        return ("- **Warning: no DVC remote is configured.** The outputs are only in this "
                "job's cache: a teammate's `dvc pull` of this dvc.lock finds nothing "
                "(`dvc remote add -d storage s3://...`; see docs/team.md)")
    if report.pushed:
        return f"- Outputs and run cache pushed to {report.remote}"
    return f"- Outputs not pushed to {report.remote} (no --commit)"


def warnings(report: Report) -> list[str]:
    """What the job log should flag (GitHub: ::warning::), beside the summary."""
    return [NO_REMOTE_WARNING] if report.remote is None else []


def render(report: Report) -> str:
    if report.base:
        base_desc = f"`{report.base}` ({report.base_sha or report.base})"
    else:
        base_desc = "none (no commit yet)"
    lines = [TITLE, "",
             f"- Base: {base_desc}; HEAD: `{report.head_sha}` plus the retrained workspace",
             f"- Stages run: {', '.join(report.ran) or 'none (everything was up to date)'}"]
    if report.unwatched_source is not None:
        lines.append(f"- data.source `{report.unwatched_source}` is not watched by DVC (a URL, "
                     "or a path outside corpus/): the download stage reruns every time, to "
                     "see changes in it")
    if report.restored:
        lines.append(f"- Outputs restored, not rerun (DVC cache or remote): "
                     f"{', '.join(report.restored)}")
    lines += [push_line(report), f"- MLflow: {describe_tracking(report.tracking_uri)}"]
    for title, body in (("Metrics diff", diff_table(report.metrics, "metrics", report.base)),
                        ("Params diff", diff_table(report.params, "params", report.base)),
                        ("MLflow runs", runs_section(report.runs)),
                        ("Loss curves", curves_section(report.curves))):
        lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"
