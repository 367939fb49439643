"""`gptpipe`: commands for people, outside DVC.

    gptpipe sample --prompt "ROMEO:"     stream text from the trained model
    gptpipe sample --model models:/gptpipe@champion    ... or from a registered one
    gptpipe lineage RUN_ID               how to get back the code and data of a run
    gptpipe runs --sort val.bits_per_char  compare the MLflow runs as a table
    gptpipe ui [--port 5000]             MLflow's UI on the runs, in its Model training view
    gptpipe runs --group-by train.lr --baseline train.lr=1.0e-3   ... pooled over seeds
    gptpipe init --update                re-resolve train.init_from (a moved alias)
    gptpipe ci report STATE --base REV   CI's job summary (scripts/ci_retrain.sh)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError, run_main


def _sample(args: argparse.Namespace) -> None:
    from . import params as params_mod
    from .inference import encode_prompt, load_model
    from .tracking.registry import model_files
    from .sampling import stream

    defaults = params_mod.SampleParams()
    if Path(args.params).exists():
        defaults = params_mod.load(args.params).sample
    temperature = defaults.temperature if args.temperature is None else args.temperature
    top_k = defaults.top_k if args.top_k is None else (args.top_k or None)
    top_p = defaults.top_p if args.top_p is None else args.top_p
    max_new = defaults.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    seed = defaults.seed if args.seed is None else args.seed
    # The same rules as params.yaml's sample section, named by their flags.
    params_mod.from_dict({"sample": {"temperature": temperature, "top_k": top_k,
                                     "top_p": top_p, "max_new_tokens": max_new}})
    with model_files(args.model) as (weights, tokenizer_file):
        model, tokenizer = load_model(weights, tokenizer_path=tokenizer_file)
    prompt = args.prompt if args.prompt is not None else defaults.prompts[0]
    ids = encode_prompt(tokenizer, prompt, "--prompt")
    decode = tokenizer.stream_decoder()
    out = sys.stdout
    out.write(prompt)
    for token in stream(model, ids, max_new, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, use_cache=not args.no_cache):
        out.write(decode([token]))
        out.flush()
    out.write("\n")


def _lineage(args: argparse.Namespace) -> None:
    from .lineage import commit_recording, git_state, run_ref_md5, stage_hashes, tree_matches
    from .tracking.runs import Tracker

    tracker = Tracker()
    try:
        run = tracker.client.get_run(args.run_id)
    except Exception as exc:  # noqa: BLE001 - MlflowException for unknown ids
        raise UserError(f"run {args.run_id}: not found in {tracker.uri} "
                        f"({type(exc).__name__})") from None
    tags = run.data.tags
    commit, dirty = tags.get("git.commit", "unknown"), tags.get("git.dirty", "unknown")
    print(f"run {args.run_id} ({run.info.run_name}, {run.info.status})")
    print(f"  git commit {commit}" + ("  (the working tree was dirty)" if dirty == "true" else ""))
    for key in sorted(k for k in tags if k.startswith("data.sha256.")):
        print(f"  {key[len('data.sha256.'):]}: {tags[key]}")
    # The commit to restore is the one whose dvc.lock records this run's outputs
    # (committed after the run), not the one it trained on.
    experiment = tracker.client.get_experiment(run.info.experiment_id).name
    restore = commit_recording(run_ref_md5(args.run_id, experiment))
    print("to get that state back:")
    if restore:
        print(f"  git checkout {restore} && dvc checkout")
    else:
        print("  (not yet: no commit holds this run's dvc.lock; commit it to make the "
              "run restorable)")
    now, recorded = {**git_state(), **stage_hashes()}, {k: v for k, v in tags.items()
                                                         if k.startswith(("git.", "dvc."))}
    if restore:  # the tracked files say it all: git.* describe the commit before the run
        recorded = {k: v for k, v in recorded.items() if not k.startswith("git.")}
    differ = sorted(k for k in recorded if now.get(k) != recorded[k])
    if restore and not tree_matches(restore):
        differ.insert(0, f"tracked files differ from {restore[:12]}")
    if differ:
        print(f"the workspace does not match: {', '.join(differ)}")
    else:
        print("the workspace matches this run")
    _print_chain(tracker.chain(args.run_id))


def _print_chain(chain: list[dict]) -> None:
    """Each run's start, back to the one trained from scratch."""
    print("trained from:")
    for i, link in enumerate(chain):
        indent = "  " * (i + 1)
        if link.get("missing"):
            print(f"{indent}run {link['run_id']}: not in this MLflow store (deleted, or "
                  "logged elsewhere)")
            return
        head = f"{indent}run {link['run_id']} ({link['name']})"
        if link["init_from"] == "scratch":
            print(f"{head}: scratch")
            return
        version = f", version {link['version']}" if link["version"] else ""
        print(f"{head}: fine-tuned from {link['init_from']}{version}, model sha256 "
              f"{link['parent_sha256'][:12]}")
    last = chain[-1]
    if not last.get("missing") and last["init_from"] != "scratch":
        print(f"{'  ' * (len(chain) + 1)}(no MLflow run is known for that model: it was "
              "trained elsewhere, or before gptpipe tagged models with their sha256)")


def _mlflow_settings(params_file: str):
    """params.yaml's mlflow section, or its defaults where there is no params.yaml."""
    from . import params as params_mod

    if Path(params_file).exists():
        return params_mod.load(params_file).mlflow
    return params_mod.Params().mlflow


def _runs(args: argparse.Namespace) -> None:
    from .tracking import runs_table
    from .tracking.runs import Tracker
    from .tracking.store import redact_uri, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri}: no run yet (run `dvc repro`), or set "
                        "MLFLOW_TRACKING_URI")
    settings = _mlflow_settings(args.params)
    experiment = args.experiment or settings.experiment
    model_name = args.model or settings.registered_model or "gptpipe"
    tracker = Tracker(uri)
    versions, champion = runs_table.fetch_versions(tracker.client, model_name)
    runs = runs_table.fetch_runs(experiment)
    if args.run_ids:  # CI's job summary: the runs it made next to the champion
        runs = runs[runs["run_id"].isin([r for r in args.run_ids.split(",") if r])]
    if args.baseline is not None and args.group_by is None:
        raise UserError("--baseline needs --group-by (e.g. --group-by train.lr "
                        "--baseline 'train.lr=1.0e-3')")
    grouping = args.group_by is not None
    table = runs_table.runs_table(runs, versions, champion,
                                  sort=args.sort, descending=args.desc,
                                  all_params=args.all_params or grouping,
                                  metric_patterns=args.metrics.split(",") if args.metrics else None)
    if table.empty:
        print(f"gptpipe: no runs in experiment '{experiment}' at {redact_uri(uri)}",
              file=sys.stderr)
        return
    if grouping:
        _print_groups(args, table, [c[len("params."):] for c in runs.columns
                                    if c.startswith("params.")])
        return
    if args.csv:
        sys.stdout.write(runs_table.to_csv(table))
    elif args.markdown:
        sys.stdout.write(runs_table.to_markdown(table))
    else:
        print(runs_table.to_text(table))


def _ui(args: argparse.Namespace) -> None:
    from .tracking.ui import ui

    settings = _mlflow_settings(args.params)
    experiment = args.experiment or settings.experiment
    code = ui(args.port, experiment)
    if code:
        raise UserError(f"ui: mlflow server exited with status {code}")


def _print_groups(args: argparse.Namespace, table, params: list[str]) -> None:
    from .tracking import runs_groups

    metrics = None
    if args.metrics:  # the metrics asked for: the table's metric columns
        metrics = [c for c in table.columns
                   if c not in runs_groups.FIRST_COLUMNS and c not in params]
    groups = runs_groups.group_runs(table, params, args.group_by, metrics, args.baseline)
    if args.csv:
        sys.stdout.write(runs_groups.to_csv(groups))
        for note in groups.notes:
            print(f"gptpipe: {note}", file=sys.stderr)
    elif args.markdown:
        sys.stdout.write(runs_groups.to_markdown(groups))
    else:
        sys.stdout.write(runs_groups.to_text(groups))


def _init(args: argparse.Namespace) -> None:
    """`dvc update` for train.init_from: drop the pin in source.json and rerun the
    init stage alone, which then resolves the alias (or re-reads the file) as it is
    now. The stages after it rerun on the next `dvc repro` only if the bytes moved."""
    import subprocess

    from .init_source import SOURCE, read_source_or_none

    if not args.update:
        raise UserError("init: nothing to do without --update (the init stage itself "
                        "runs under `dvc repro`)")
    before = read_source_or_none()
    SOURCE.unlink(missing_ok=True)
    result = subprocess.run(["dvc", "repro", "--single-item", "--force", "init"])
    if result.returncode != 0:
        if before is not None and not SOURCE.exists():  # nothing earlier lost
            from .files import write_json

            write_json(SOURCE, before)
        raise UserError(f"init --update: `dvc repro --single-item --force init` failed "
                        f"(exit {result.returncode}); {SOURCE} is as it was")
    after = read_source_or_none() or {}
    if before and before.get("model_sha256") == after.get("model_sha256"):
        print(f"init: {after.get('init_from')} still resolves to the same model: "
              "nothing after init will rerun")
    else:
        print("init: the start model changed: `dvc repro` fine-tunes from it")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gptpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="stream text from the trained model")
    sample.add_argument("--prompt", default=None)
    sample.add_argument("--model", default="models/model.pt",
                        help="a model file, runs:/<run_id>/model, models:/<name>@<alias> "
                             "or models:/<name>/<version>")
    sample.add_argument("--params", default="params.yaml",
                        help="defaults come from its sample section")
    sample.add_argument("--max-new-tokens", type=int, default=None)
    sample.add_argument("--temperature", type=float, default=None)
    sample.add_argument("--top-k", type=int, default=None, help="0 = off")
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--no-cache", action="store_true",
                        help="recompute the whole context every token (slow; for checking)")
    sample.set_defaults(func=_sample)
    lineage = commands.add_parser("lineage", help="the code and data behind an MLflow run")
    lineage.add_argument("run_id")
    lineage.set_defaults(func=_lineage)
    runs = commands.add_parser(
        "runs", help="the MLflow runs as a table: differing params, final metrics, champion",
        description="One row per MLflow run of the experiment: its name, DVC experiment, "
                    "registered model version (and whether it is the champion), the params "
                    "that differ between the runs, and each metric's last value.")
    runs.add_argument("--sort", default=None, metavar="COLUMN",
                      help=f"a metric or param to sort by (default: {'val.bits_per_char'} "
                           "when evaluated), lowest first")
    runs.add_argument("--desc", action="store_true", help="sort highest first")
    runs.add_argument("--experiment", default=None,
                      help="MLflow experiment (default: params.yaml mlflow.experiment)")
    runs.add_argument("--model", default=None,
                      help="registered model name (default: params.yaml "
                           "mlflow.registered_model, else gptpipe)")
    runs.add_argument("--metrics", default=None, metavar="PATTERNS",
                      help="only these metrics, comma-separated, with * wildcards "
                           "(e.g. 'val.*,best_val_*'); default: all but system/* and the "
                           "per-step batch_loss and lr")
    runs.add_argument("--params", default="params.yaml", help="where the defaults come from")
    runs.add_argument("--run-ids", default=None, metavar="IDS",
                      help="only these runs, comma-separated run ids")
    runs.add_argument("--all-params", action="store_true",
                      help="every param, not only those that differ between the runs")
    runs.add_argument("--group-by", nargs="?", const="config", default=None, metavar="KEYS",
                      help="pool the runs into groups by these params' values, comma-separated "
                           "(e.g. train.lr,model.n_embd); 'config' or none given: every param "
                           "but train.seed and those that change no result. Per group: n, "
                           "each metric's mean and sd (default metrics: val.bits_per_char, "
                           "val.loss)")
    runs.add_argument("--baseline", default=None, metavar="SELECTOR",
                      help="with --group-by: the group to compare the others with, as "
                           "KEY=VALUE[,KEY=VALUE] (e.g. 'train.lr=1.0e-3'): the difference of "
                           "means and Welch's two-sided t-test p-value")
    output = runs.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="CSV (full precision, run ids)")
    output.add_argument("--markdown", action="store_true", help="a markdown table")
    runs.set_defaults(func=_runs)
    ui = commands.add_parser(
        "ui", help="MLflow's UI on this project's runs, opened in the Model training view",
        description="Starts `mlflow server` on the project's store (mlflow.db) on "
                    "127.0.0.1 and prints the link to the experiment in the Model training "
                    "view; with MLFLOW_TRACKING_URI set to a server, prints its link only.")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--experiment", default=None,
                    help="MLflow experiment (default: params.yaml mlflow.experiment)")
    ui.add_argument("--params", default="params.yaml", help="where the defaults come from")
    ui.set_defaults(func=_ui)
    init = commands.add_parser(
        "init", help="re-resolve train.init_from (an alias that moved, a rewritten file)",
        description="The init stage pins what train.init_from resolved to in "
                    "models/init/source.json, as `dvc import` does; --update resolves it "
                    "again (runs `dvc repro --single-item --force init`).")
    init.add_argument("--update", action="store_true",
                      help="drop the pin and resolve train.init_from as it is now")
    init.set_defaults(func=_init)
    from .ci.commands import add_parser as add_ci_parser

    add_ci_parser(commands)
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["GPTPIPE_DEBUG"] = "1"
    run_main(lambda: args.func(args), "gptpipe")


if __name__ == "__main__":
    main()
