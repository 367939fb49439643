"""train: fit the model on data/split/, log the run to MLflow, write models/model.pt.

Resumes exactly from the checkpoint of an interrupted run with the same params
and data; MLflow gets the metrics a checkpoint covers (gptpipe/train_run.py).
Under torchrun, rank 0 alone talks to MLflow and writes files.
"""
import contextlib
import os
from pathlib import Path

from gptpipe import checkpoints, params, warm_start
from gptpipe.arrays import load_tokens
from gptpipe.errors import run_main
from gptpipe.files import read_json, sha256_file, write_json
from gptpipe.lineage import git_state, stage_hashes
from gptpipe.reporting import history_csv, losses_csv, write_loss_curve, write_text
from gptpipe.tracking import BackgroundRun

TRAIN, VAL = Path("data/split/train.npy"), Path("data/split/val.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
MODEL = Path("models/model.pt")
SUMMARY, LOSSES = Path("reports/train.json"), Path("reports/train_losses.csv")
HISTORY, CURVE = Path("reports/train_history.csv"), Path("reports/loss_curve.png")
RUN_REF = Path("reports/mlflow_run.json")
DOWNLOAD = Path("reports/download.json")
SPLIT_REPORT = Path("reports/split.json")


def main() -> None:
    p = params.load()
    from gptpipe.train_run import TrainRun, start_world, stop_on_signals

    device, world = start_world(p.train.device)
    # Rank 0 alone talks to MLflow, in the background once step 1 is done: training starts
    # without waiting for it. A down server or refused credentials fail the stage here,
    # before training (one loopback request).
    mlflow = BackgroundRun() if world.is_main else None
    data_hashes = {"train.npy": sha256_file(TRAIN), "val.npy": sha256_file(VAL),
                   "tokenizer.json": sha256_file(TOKENIZER)}
    begin = warm_start.start(p, TOKENIZER)  # scratch, or the init_from weights (checked)
    run = TrainRun.build(p, device, world, mlflow, begin, load_tokens(TRAIN),
                         load_tokens(VAL), data_hashes)
    resumed = run.resume()
    if world.is_main and not begin.is_scratch:
        print(f"train: fine-tuning from {p.train.init_from} "
              f"(model sha256 {begin.source['model_sha256'][:12]})", flush=True)
    if world.is_main:
        resumed_id = run.run_id
        mlflow.open(lambda tracker: resumed_id if resumed else _create_run(
            tracker, p, data_hashes, run.params_key, run.autocast, begin.source),
            # the run page's Datasets; then CPU and memory while training
            then=lambda tracker, run_id: tracker.log_data_inputs(
                run_id, {"train": (TRAIN, data_hashes["train.npy"]),
                         "val": (VAL, data_hashes["val.npy"])}, DOWNLOAD),
            system_metrics=True)
        print(f"train: {run.describe()}", flush=True)

    should_stop = stop_on_signals()
    with mlflow.stage() if world.is_main else contextlib.nullcontext():
        run.train(should_stop)
        if world.is_main:
            tracker, run.run_id = mlflow.get()
            print(f"train: MLflow run {run.run_id}", flush=True)
            _write_outputs(run, p, data_hashes, tracker)
    run.close()


def _create_run(tracker, p, data_hashes, params_key, autocast, source: dict) -> str:
    # Only the stages before train: dvc.lock's train/evaluate/sample are the last run's.
    tags = {**git_state(), **stage_hashes(exclude=("train", "evaluate", "sample")),
            **{f"data.sha256.{k}": v for k, v in data_hashes.items()},
            "data.sha256.raw": _raw_corpus_sha256(), "gptpipe.params_key": params_key,
            **tracker.parent_tags(source, p.mlflow.experiment),
            # what train.autocast resolved to on this machine, and why
            "gptpipe.autocast": autocast.name, "gptpipe.autocast_reason": autocast.reason}
    exclude = ("evaluate", "sample")  # logged by their stages, which may rerun
    flat = p.flat(tuple(s for s in p.flat_sections() if s not in exclude))
    run_id = tracker.create_run(p.mlflow.experiment, os.environ.get("DVC_EXP_NAME"), flat, tags)
    # How much of val is verbatim in train (reports/split.json): a low val loss means
    # less when this is high.
    overlap = read_json(SPLIT_REPORT).get("val_in_train", {}) if SPLIT_REPORT.exists() else {}
    if "share" in overlap:
        tracker.log_metrics(run_id, [("data.val_in_train", overlap["share"], 0)])
    return run_id


def _write_outputs(run, p, data_hashes, tracker) -> None:
    from gptpipe.model import count_params

    trainer, cfg, run_id = run.trainer, run.config, run.run_id
    state = {k: v.detach().cpu().float().contiguous() for k, v in trainer.model.state_dict().items()}
    checkpoints.save(MODEL, {
        "format": checkpoints.MODEL_FORMAT, "model_config": cfg.as_dict(), "state_dict": state,
        "tokenizer": {"path": TOKENIZER.as_posix(), "sha256": data_hashes["tokenizer.json"]},
        "step": trainer.step})
    last = trainer.history[-1]
    best = min(trainer.history, key=lambda row: (row.val_loss, row.step))
    write_json(SUMMARY, {"parameters": count_params(trainer.model), "steps": trainer.step,
                         "final_train_loss": round(last.train_loss, 6),
                         "final_val_loss": round(last.val_loss, 6),
                         "best_val_loss": round(best.val_loss, 6), "best_val_step": best.step,
                         # train.autocast auto depends on the machine: say what it chose
                         "autocast": run.autocast.name,
                         "threads": run.threads.threads,  # at the end: auto follows the load
                         "model": cfg.as_dict()})
    write_text(LOSSES, losses_csv(trainer.history))
    write_text(HISTORY, history_csv(trainer.history))
    write_loss_curve(trainer.history, CURVE, f"{cfg.kind}: {count_params(trainer.model):,} params")
    write_json(RUN_REF, {"run_id": run_id, "experiment": p.mlflow.experiment})
    tracker.log_best_val(run_id, best.val_loss, best.step)
    # Content-addressed lineage: a later init_from path to these bytes finds this run.
    tracker.set_tags(run_id, {"gptpipe.model_sha256": sha256_file(MODEL)})
    tracker.log_artifact(run_id, CURVE, "plots")
    tracker.log_artifact(run_id, HISTORY, "history")
    tracker.log_artifact(run_id, TOKENIZER, "tokenizer")
    if p.mlflow.log_model:  # an MLflow model (runs:/<run_id>/model), a new registered version
        from gptpipe import registry

        version = registry.log_model(tracker, run_id, MODEL, TOKENIZER, p.mlflow.registered_model,
                                     exp_name=os.environ.get("DVC_EXP_NAME"))
        print(f"train: logged model runs:/{run_id}/model, "
              f"registered as models:/{p.mlflow.registered_model}/{version}")


def _raw_corpus_sha256() -> str:
    report = Path("reports/download.json")
    return read_json(report).get("sha256", "unknown") if report.exists() else "unknown"


if __name__ == "__main__":
    run_main(main, "train")
