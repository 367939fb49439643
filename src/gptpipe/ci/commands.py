"""`gptpipe ci ...`: the decisions and the report scripts/ci_retrain.sh asks for.

    gptpipe ci base [REF]        the revision to diff against (empty: none)
    gptpipe ci remote [--describe]  the DVC remote to push to (empty: none)
    gptpipe ci source            why the download stage must be forced (empty: it need not)
    gptpipe ci before STATE      record, before `dvc repro`, what is out of date
    gptpipe ci ran STATE         after it: the stages that ran, comma-separated
    gptpipe ci report STATE --base REV [--pushed]   the job summary (stdout and
                                 $GITHUB_STEP_SUMMARY), the loss curves PNG
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PARAMS = Path("params.yaml")


def warn(message: str) -> None:
    """A warning in the job log, and under GitHub Actions on the run's page."""
    print(f"warning: {message}", file=sys.stderr)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        print(f"::warning::{message}", file=sys.stderr)


def _source() -> str:
    import yaml

    params = yaml.safe_load(PARAMS.read_text(encoding="utf-8")) if PARAMS.exists() else {}
    return str(((params or {}).get("data") or {}).get("source", "shakespeare")).strip()


def _forced_source() -> str | None:
    """data.source (redacted) when the download stage must be forced, else None."""
    from ..sources import redact
    from .decide import force_download

    source = _source()
    return redact(source) if force_download(source) else None


def _base(args: argparse.Namespace) -> None:
    from . import git
    from .decide import choose_base, is_full_sha

    base = choose_base(args.ref, resolve=git.resolve, head=git.resolve("HEAD"),
                       github_base_ref=os.environ.get("GITHUB_BASE_REF", ""),
                       default_branch=git.origin_default_branch(), warn=warn)
    if is_full_sha(base):
        base = git.short(base) or base
    print(base)


def _remote(args: argparse.Namespace) -> None:
    from .dvc_state import remote
    from .report import describe_remote

    found = remote()
    if found is not None:
        print(describe_remote(found.name, found.url) if args.describe else found.name)


def _source_cmd(args: argparse.Namespace) -> None:
    forced = _forced_source()
    if forced is not None:
        print(f"data.source ({forced}) is not watched by DVC (a URL, or a path outside "
              "corpus/): rerunning the download stage")


def _before(args: argparse.Namespace) -> None:
    from . import dvc_state
    from .mlflow_runs import champion_run

    state = {"status": dvc_state.status(), "lock": dvc_state.lock_stages(),
             "forced_download": _forced_source() is not None,
             "champion_before": champion_run(PARAMS)}
    args.state.write_text(json.dumps(state), encoding="utf-8")


def _stages(state: dict) -> tuple[list[str], list[str]]:
    from . import dvc_state
    from .decide import stages_run

    return stages_run(state["status"], state["lock"], dvc_state.lock_stages(),
                      state["forced_download"])


def _load(path: Path) -> dict:
    from ..errors import UserError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path}: no state recorded by `gptpipe ci before`") from None


def _ran(args: argparse.Namespace) -> None:
    ran, _restored = _stages(_load(args.state))
    print(", ".join(ran))


def _run_id(text: str | None) -> str | None:
    try:
        return json.loads(text)["run_id"] if text else None
    except (ValueError, KeyError, TypeError):
        return None


def _report(args: argparse.Namespace) -> None:
    from . import dvc_state, git, loss_curves, mlflow_runs
    from .report import Report, Runs, describe_remote, render, warnings

    state = _load(args.state)
    base = args.base
    ran, restored = _stages(state)
    found = dvc_state.remote()
    report = Report(base=base, base_sha=git.short(base) if base else None,
                    head_sha=git.short("HEAD") or "none", ran=ran, restored=restored,
                    unwatched_source=_forced_source() if state["forced_download"] else None,
                    remote=describe_remote(found.name, found.url) if found else None,
                    pushed=args.pushed and found is not None,
                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None)
    if base:
        print(f"==> dvc metrics diff --json {base}; dvc params diff --json {base}",
              flush=True)
        for kind, diff in (("metrics", dvc_state.metrics_diff),
                           ("params", dvc_state.params_diff)):
            try:
                setattr(report, kind, diff(base))
            except dvc_state.DvcError as exc:
                setattr(report, kind, str(exc))
    run_file = Path("reports/mlflow_run.json")
    runs = Runs(base=_run_id(dvc_state.read_at(run_file.as_posix(), base)) if base else None,
                new=_run_id(run_file.read_text(encoding="utf-8")) if run_file.exists() else None,
                champion_before=state.get("champion_before"))
    if runs.new and runs.new != runs.base:
        try:
            runs.table = mlflow_runs.runs_markdown([runs.new, runs.base or "",
                                                    runs.champion_before or ""], PARAMS)
        except Exception as exc:  # noqa: BLE001 - the report says why, the job goes on
            runs.error = f"{type(exc).__name__}: {exc}"
    report.runs = runs
    report.curves = loss_curves.draw(base, args.artifacts)
    for message in warnings(report):
        warn(message)
    text = render(report)
    print()
    sys.stdout.write(text)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as fh:
            fh.write(text)


def add_parser(commands) -> None:
    """Register `gptpipe ci` and its subcommands on the cli's subparsers."""
    ci = commands.add_parser(
        "ci", help="CI retraining's decisions and job summary (scripts/ci_retrain.sh)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ci.add_subparsers(dest="ci_command", required=True)
    base = sub.add_parser("base", help="the revision to diff against (empty: none)")
    base.add_argument("ref", nargs="?", default="",
                      help="the base asked for (empty or all zeros: not given)")
    base.set_defaults(func=_base)
    remote = sub.add_parser("remote", help="the DVC remote to push to (empty: none)")
    remote.add_argument("--describe", action="store_true",
                        help="its name and URL without credentials, for messages")
    remote.set_defaults(func=_remote)
    sub.add_parser("source", help="why the download stage must be forced (empty: it "
                                  "need not)").set_defaults(func=_source_cmd)
    for name, func, what in (("before", _before, "record what is out of date, before "
                                                 "`dvc repro`"),
                             ("ran", _ran, "the stages that ran, from the recorded state")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("state", type=Path, help="the state file (JSON)")
        cmd.set_defaults(func=func)
    report = sub.add_parser("report", help="the markdown job summary and the loss curves")
    report.add_argument("state", type=Path, help="the state `gptpipe ci before` recorded")
    report.add_argument("--base", default="", help="the revision to diff against "
                                                   "(`gptpipe ci base`)")
    report.add_argument("--pushed", action="store_true",
                        help="the outputs and run cache were pushed to the DVC remote")
    report.add_argument("--artifacts", type=Path,
                        default=Path(os.environ.get("CI_ARTIFACTS_DIR") or "ci-artifacts"),
                        help="where the loss curves PNG goes (default: $CI_ARTIFACTS_DIR, "
                             "else ci-artifacts)")
    report.add_argument("--summary", default=os.environ.get("GITHUB_STEP_SUMMARY") or None,
                        help="a file the report is appended to (default: "
                             "$GITHUB_STEP_SUMMARY)")
    report.set_defaults(func=_report)
