"""train: fit the model on data/split/, log the run to MLflow, write models/model.pt
(the best eval's weights, or the last: train.keep; its tokenizer inside).

Resumes exactly from the checkpoint of an interrupted run with the same params
and data; MLflow gets the metrics a checkpoint covers (gptpipe/train_run.py).
Under torchrun, rank 0 alone talks to MLflow and writes files.
"""
import contextlib
import os
import sys
from pathlib import Path

from gptpipe import params
from gptpipe.allocator import keep_freed_memory
from gptpipe.arrays import load_tokens
from gptpipe.config_id import TAG as CONFIG_TAG, config_tag
from gptpipe.errors import run_main
from gptpipe.files import read_json, sha256_file, write_json
from gptpipe.launcher import relaunch_argv
from gptpipe.lineage import git_state, stage_hashes
from gptpipe.reporting import history_csv, losses_csv, write_loss_curve, write_text
from gptpipe.tracking import notes
from gptpipe.tracking.background import BackgroundRun, RunSpec

TRAIN, VAL = Path("data/split/train.npy"), Path("data/split/val.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
MODEL = Path("models/model.pt")
SUMMARY, LOSSES = Path("reports/train.json"), Path("reports/train_losses.csv")
HISTORY, CURVE = Path("reports/train_history.csv"), Path("reports/loss_curve.png")
RUN_REF = Path("reports/mlflow_run.json")
DOWNLOAD = Path("reports/download.json")
SPLIT_REPORT = Path("reports/split.json")


def main() -> None:
    keep_freed_memory()  # every step reuses the last one's memory (allocator.py)
    p = params.load()
    relaunch = relaunch_argv(p.train.launcher, sys.argv[0])
    if relaunch is not None:  # train.launcher torchrun: this process becomes torchrun
        print(f"train: starting under {p.train.launcher}", flush=True)
        os.execv(relaunch[0], relaunch)
    # Rank 0 alone talks to MLflow, from an idle-priority process of its own (when and
    # how, is tracking/background.py's): a down server or refused credentials fail here.
    # It starts before torch is imported (torchrun's RANK names rank 0), so MLflow's
    # imports run on the core this process's start-up leaves idle.
    background_run = (BackgroundRun(warm_model_imports=p.mlflow.log_model or
                                    p.mlflow.log_checkpoints)
                      if os.environ.get("RANK", "0") == "0" else None)
    from gptpipe import warm_start
    from gptpipe.train_run import TrainRun, start_world, stop_on_signals

    device, world = start_world(p.train.device)
    data_hashes = {"train.npy": sha256_file(TRAIN), "val.npy": sha256_file(VAL),
                   "tokenizer.json": sha256_file(TOKENIZER)}
    begin = warm_start.start(p, TOKENIZER)  # scratch, or the init_from weights (checked)
    run = TrainRun.build(p, device, world, background_run, begin, load_tokens(TRAIN),
                         load_tokens(VAL), data_hashes)
    resumed = run.resume()
    if world.is_main and not begin.is_scratch:
        print(f"train: fine-tuning from {p.train.init_from} "
              f"(model sha256 {begin.source['model_sha256'][:12]})", flush=True)
    if world.is_main:
        background_run.open(_run_spec(p, run, resumed, data_hashes, begin.source))
        print(f"train: {run.describe()}", flush=True)

    if world.is_main and p.mlflow.log_checkpoints:
        run.on_eval_main = lambda row: _keep_eval_weights(run, row.step)
    if world.is_main:  # the files, while the tracking process catches up (performance.md)
        run.on_trained_main = lambda: _write_outputs(run, p)
    should_stop = stop_on_signals()
    with background_run.stage() if world.is_main else contextlib.nullcontext():
        run.train(should_stop)
        if world.is_main:
            if run.on_trained_main is not None:  # not called: resumed after the last step
                run.on_trained_main()
            tracker, run.run_id = background_run.get()
            print(f"train: MLflow run {run.run_id}", flush=True)
            _log_outputs(run, p, tracker)
            _log_model_and_describe(run, p, tracker)
            if p.mlflow.log_checkpoints:
                _log_eval_weights(run, tracker)
    run.close()


def _run_spec(p, run, resumed: bool, data_hashes, source: dict) -> RunSpec:
    """The MLflow run: the one the resumed checkpoint names, or a new one; either way
    the run page's Datasets, then CPU and memory while training."""
    data = {"datasets": {"train": (TRAIN, data_hashes["train.npy"]),
                         "val": (VAL, data_hashes["val.npy"])},
            "download_report": DOWNLOAD, "system_metrics": True}
    if resumed:
        return RunSpec(p.mlflow.experiment, run_id=run.run_id, **data)
    # Only the stages before train: dvc.lock's train/evaluate/sample are the last run's.
    tags = {**git_state(), **stage_hashes(exclude=("train", "evaluate", "sample")),
            **{f"data.sha256.{k}": v for k, v in data_hashes.items()},
            "data.sha256.raw": _raw_corpus_sha256(), "gptpipe.params_key": run.params_key,
            # what train.autocast resolved to on this machine, and why
            "gptpipe.autocast": run.autocast.name, "gptpipe.autocast_reason": run.autocast.reason,
            # the config without the seed: the UI's "Group by" pools a sweep's seeds
            CONFIG_TAG: config_tag(p.flat())}
    exclude = ("evaluate", "sample")  # logged by their stages, which may rerun
    flat = p.flat(tuple(s for s in p.flat_sections() if s not in exclude))
    # How much of val is verbatim in train (reports/split.json): a low val loss means
    # less when this is high.
    overlap = read_json(SPLIT_REPORT).get("val_in_train", {}) if SPLIT_REPORT.exists() else {}
    metrics = (("data.val_in_train", overlap["share"], 0),) if "share" in overlap else ()
    # the parent's tags (a fine-tune's init_from) are looked up in MLflow, in the background
    run_name = os.environ.get("DVC_EXP_NAME") or notes.run_name(p)  # "lr=3e-3", "baseline"
    return RunSpec(p.mlflow.experiment, run_name=run_name, params=flat,
                   tags=tags, init_source=source, metrics=metrics, **data)


def _write_outputs(run, p) -> None:
    """models/model.pt and the reports: nothing here needs MLflow."""
    from gptpipe import checkpoints
    from gptpipe.model import count_params

    trainer, cfg = run.trainer, run.config
    # train.keep: the weights of the eval with the lowest val loss (best), or the last
    kept = trainer.kept_step
    state = {k: v.detach().cpu().float().contiguous()
             for k, v in trainer.kept_state_dict().items()}
    checkpoints.save(MODEL, checkpoints.model_payload(
        cfg.as_dict(), state, TOKENIZER, step=kept, keep=p.train.keep,
        trained_steps=trainer.step))
    last = trainer.history[-1]
    stop = trainer.early_stop
    write_json(SUMMARY, {"parameters": count_params(trainer.model), "steps": trainer.step,
                         "final_train_loss": round(last.train_loss, 6),
                         "final_val_loss": round(last.val_loss, 6),
                         # the Trainer's best, as the MLflow metrics (_log_outputs)
                         "best_val_loss": round(trainer.best_val, 6),
                         "best_val_step": trainer.best_step,
                         # which step's weights models/model.pt holds, and why
                         "keep": p.train.keep, "kept_step": kept,
                         "early_stop": None if stop is None else {
                             "step": stop.step, "patience": stop.patience,
                             "min_delta": stop.min_delta, "kept_step": stop.kept_step},
                         # train.autocast auto depends on the machine: say what it chose
                         "autocast": run.autocast.name,
                         "threads": run.threads.threads,  # at the end: auto follows the load
                         "model": cfg.as_dict()})
    write_text(LOSSES, losses_csv(trainer.history))
    write_text(HISTORY, history_csv(trainer.history))
    write_loss_curve(trainer.history, CURVE, f"{cfg.kind}: {count_params(trainer.model):,} params")


def _log_outputs(run, p, tracker) -> None:
    """What _write_outputs wrote, on the MLflow run: the best val loss, the kept step,
    early stopping, the model's sha256, the chart, the history and the tokenizer."""
    trainer, run_id = run.trainer, run.run_id
    kept, stop = trainer.kept_step, trainer.early_stop
    tracker.log_best_val(run_id, trainer.best_val, trainer.best_step)  # the lowest eval's
    tracker.set_tags(run_id, {"gptpipe.kept_step": str(kept), "gptpipe.keep": p.train.keep})
    if stop is not None:
        tracker.set_tags(run_id, {"gptpipe.early_stop": stop.message()})
        tracker.log_metrics(run_id, [("early_stop_step", stop.step, stop.step)])
    # Content-addressed lineage: a later init_from path to these bytes finds this run.
    tracker.set_tags(run_id, {"gptpipe.model_sha256": sha256_file(MODEL)})
    tracker.log_artifact(run_id, CURVE, "plots")
    tracker.log_artifact(run_id, HISTORY, "history")
    tracker.log_artifact(run_id, TOKENIZER, "tokenizer")


def _log_model_and_describe(run, p, tracker) -> None:
    """The shipped weights as an MLflow 3 LoggedModel at their step (train.json's
    kept_step, else the last), registered; its id in reports/mlflow_run.json for
    evaluate (like the run id: MLflow's, not a function of deps and params); the
    run's Description (tracking/notes.py)."""
    from gptpipe.model import count_params

    run_id, summary = run.run_id, read_json(SUMMARY)
    kept_step = int(summary.get("kept_step", run.trainer.step))
    ref = {"run_id": run_id, "experiment": p.mlflow.experiment}
    if p.mlflow.log_model:  # an MLflow model (runs:/<run_id>/model), a new registered version
        from gptpipe.tracking import registry

        # in the tracking process, with its tracker (tracking/process.py)
        logged = tracker.call(registry.log_model, run_id, MODEL, TOKENIZER,
                              p.mlflow.registered_model, exp_name=os.environ.get("DVC_EXP_NAME"),
                              step=kept_step)
        ref["model_id"] = logged.model_id
        print(f"train: logged model runs:/{run_id}/model (models:/{logged.model_id}, step "
              f"{kept_step}), registered as models:/{p.mlflow.registered_model}/{logged.version}")
    write_json(RUN_REF, ref)
    split = read_json(SPLIT_REPORT) if SPLIT_REPORT.exists() else {}
    download = read_json(DOWNLOAD) if DOWNLOAD.exists() else {}
    facts = {notes.PARAMETERS_TAG: count_params(run.trainer.model),
             notes.KEPT_STEP_TAG: kept_step,
             notes.SOURCE_TAG: download.get("source", "unknown")}
    if "train_tokens" in split:
        facts[notes.TOKENS_TAG] = (f"{split['train_tokens']:,} train + "
                                   f"{split['val_tokens']:,} val")
    tracker.call(notes.describe, run_id, facts)


# -- mlflow.log_checkpoints: each eval step's weights as a LoggedModel ---------------

def _eval_weights(run) -> list[tuple[int, Path]]:
    """The eval steps' weights kept so far, by step (beside the checkpoint: a resumed
    train still has those from before the stop)."""
    found = [(int(path.stem.split("-")[1]), path)
             for path in run.checkpoint.parent.glob("eval-*.pt")]
    return sorted(found)


def _keep_eval_weights(run, step: int) -> None:
    from gptpipe import checkpoints

    model = run.trainer.model
    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    checkpoints.save(run.checkpoint.parent / f"eval-{step}.pt", checkpoints.model_payload(
        run.config.as_dict(), state, TOKENIZER, step=step, trained_steps=step))


def _log_eval_weights(run, tracker) -> None:
    """Each eval step's weights as a LoggedModel `checkpoint-<step>` of the run, at that
    step (so with that step's val_loss and train_loss); not registered."""
    from gptpipe.tracking import registry

    weights = _eval_weights(run)
    tracker.call(registry.log_eval_weights, run.run_id, weights, TOKENIZER)
    print(f"train: logged {len(weights)} eval steps' weights as MLflow models")


def _raw_corpus_sha256() -> str:
    report = Path("reports/download.json")
    return read_json(report).get("sha256", "unknown") if report.exists() else "unknown"


if __name__ == "__main__":
    run_main(main, "train", skip_teardown=True)  # it imports torch: errors.py
