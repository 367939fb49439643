"""train: fit the model on data/split/, log the run to MLflow, write models/model.pt.

Resumes exactly from the checkpoint of an interrupted run with the same
params and data (kept under .gptpipe/checkpoints/, where DVC never deletes it).
MLflow gets a run's metrics only once the checkpoint covering them is on disk,
so a resumed run continues the same metric history without duplicates.
"""
import contextlib
import os
import shutil
import signal
from pathlib import Path

from gptpipe import checkpoints, params
from gptpipe.arrays import load_tokens
from gptpipe.errors import run_main
from gptpipe.files import read_json, sha256_file, write_json
from gptpipe.lineage import git_state, repo_root, stage_hashes
from gptpipe.reporting import history_csv, losses_csv, write_loss_curve, write_text
from gptpipe.tracking import Tracker

TRAIN, VAL = Path("data/split/train.npy"), Path("data/split/val.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
MODEL = Path("models/model.pt")
SUMMARY, LOSSES = Path("reports/train.json"), Path("reports/train_losses.csv")
HISTORY, CURVE = Path("reports/train_history.csv"), Path("reports/loss_curve.png")
RUN_REF = Path("reports/mlflow_run.json")
DOWNLOAD = Path("reports/download.json")


def main() -> None:
    p = params.load()
    import torch
    from tqdm import tqdm

    from gptpipe import distributed
    from gptpipe.model import ModelConfig, build, count_params
    from gptpipe.training import Trainer, autocast_dtype, make_deterministic, pick_device

    device = pick_device(p.train.device)
    world = distributed.init(device)  # torchrun: one process per rank; else a world of 1
    device = distributed.local_device(device, world)
    # Rank 0 alone talks to MLflow; it fails now, not after training, if unreachable.
    tracker = Tracker() if world.is_main else None

    data_hashes = {"train.npy": sha256_file(TRAIN), "val.npy": sha256_file(VAL),
                   "tokenizer.json": sha256_file(TOKENIZER)}
    identity = {**p.flat(("model", "train")), "world_size": world.size,
                **{f"sha256.{k}": v for k, v in data_hashes.items()}}
    ckpt_dir = repo_root() / ".gptpipe" / "checkpoints" / checkpoints.identity_key(identity)
    ckpt_path = ckpt_dir / "checkpoint.pt"

    if p.train.threads:
        torch.set_num_threads(p.train.threads)
    make_deterministic(p.train.seed)
    vocab = read_json(TOKENIZER)
    cfg = ModelConfig(kind=p.model.kind, vocab_size=vocab["vocab_size"],
                      block_size=p.model.block_size, n_layer=p.model.n_layer,
                      n_head=p.model.n_head, n_embd=p.model.n_embd, dropout=p.model.dropout,
                      bias=p.model.bias, tie_weights=p.model.tie_weights)
    model = build(cfg).to(device)
    amp = autocast_dtype(device, p.train.autocast)
    ddp_model = None
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(model, load_tokens(TRAIN), load_tokens(VAL), p.train, device, amp,
                      world=world, ddp_model=ddp_model)

    run_id, unlogged = None, []
    if ckpt_path.exists():
        payload = checkpoints.load(ckpt_path)
        checkpoints.check_identity(ckpt_path, payload["identity"], identity)
        trainer.load_state_dict(payload["trainer"])
        run_id = payload["run_id"]
        if world.is_main:
            print(f"train: resuming from step {trainer.step} ({ckpt_path})", flush=True)
            unlogged = payload.get("unlogged", [])
    elif world.is_main:
        # Only the stages before train: dvc.lock's train/evaluate/sample are the last run's.
        tags = {**git_state(), **stage_hashes(exclude=("train", "evaluate", "sample")),
                **{f"data.sha256.{k}": v for k, v in data_hashes.items()},
                "data.sha256.raw": _raw_corpus_sha256(), "gptpipe.params_key": ckpt_dir.name}
        exclude = ("evaluate", "sample")  # logged by their stages, which may rerun
        flat = p.flat(tuple(s for s in p.flat_sections() if s not in exclude))
        run_id = tracker.create_run(p.mlflow.experiment, os.environ.get("DVC_EXP_NAME"),
                                    flat, tags)
    if world.is_main:
        print(f"train: {cfg.kind}, {count_params(model):,} parameters, device {device}"
              f"{', bf16 autocast' if amp else ''}"
              f"{f', {world.size} processes' if world.size > 1 else ''}, MLflow run {run_id}",
              flush=True)

    pending: list[tuple[str, float, int]] = []

    def on_eval(row) -> None:
        pending.extend([("train_loss", row.train_loss, row.step),
                        ("val_loss", row.val_loss, row.step)])
        if row.step:
            pending.append(("tokens_per_s", row.tokens_per_s, row.step))
        if world.is_main:
            bar.write(f"step {row.step:>6}: train {row.train_loss:.4f}, val {row.val_loss:.4f}")

    def on_checkpoint(t) -> None:
        state = t.state_dict()  # a collective under DDP: every rank takes part
        if not world.is_main:
            return
        rows = pending + [(k, v, s) for s, lr, loss in t.batch_losses
                          for k, v in (("batch_loss", loss), ("lr", lr))]
        # The rows go in the checkpoint too: a kill between the save and the log
        # would lose them; a resume logs those MLflow lacks.
        checkpoints.save(ckpt_path, {"format": checkpoints.CHECKPOINT_FORMAT,
                                     "identity": identity, "run_id": run_id,
                                     "trainer": state, "unlogged": [list(r) for r in rows]})
        tracker.log_metrics(run_id, rows)
        pending.clear()
        t.batch_losses.clear()

    stop = {"signal": None}

    def request_stop(signum, frame) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with tracker.stage(run_id) if world.is_main else contextlib.nullcontext():
        if world.is_main:  # the last checkpoint's rows a kill kept from MLflow
            tracker.log_missing_metrics(run_id, unlogged)
            tracker.log_data_inputs(run_id, {"train": (TRAIN, data_hashes["train.npy"]),
                                             "val": (VAL, data_hashes["val.npy"])}, DOWNLOAD)
        with tracker.system_metrics(run_id) if world.is_main else contextlib.nullcontext(), \
                tqdm(total=p.train.max_iters, initial=trainer.step, desc="train",
                  mininterval=1.0, dynamic_ncols=True, disable=not world.is_main) as bar:
            def progress(step, loss, tokens_per_s):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

            trainer.run(on_eval, on_checkpoint, lambda: stop["signal"] is not None, progress)
        digests = distributed.gather(distributed.weights_digest(model), world)
        if world.is_main:
            if len(set(digests)) != 1:
                raise RuntimeError(f"ranks ended with different weights: {digests}")
            if world.size > 1:
                print(f"train: weights identical on all {world.size} ranks ({digests[0][:12]})")
            _write_outputs(trainer, cfg, p, data_hashes, run_id, tracker)
    distributed.shutdown(world)
    if world.is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _write_outputs(trainer, cfg, p, data_hashes, run_id, tracker) -> None:
    from gptpipe.model import count_params

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
                         "model": cfg.as_dict()})
    write_text(LOSSES, losses_csv(trainer.history))
    write_text(HISTORY, history_csv(trainer.history))
    write_loss_curve(trainer.history, CURVE, f"{cfg.kind}: {count_params(trainer.model):,} params")
    write_json(RUN_REF, {"run_id": run_id, "experiment": p.mlflow.experiment})
    tracker.log_best_val(run_id, best.val_loss, best.step)
    tracker.log_artifact(run_id, CURVE, "plots")
    tracker.log_artifact(run_id, HISTORY, "history")
    tracker.log_artifact(run_id, TOKENIZER, "tokenizer")
    if p.mlflow.log_model:
        tracker.log_artifact(run_id, MODEL, "model")


def _raw_corpus_sha256() -> str:
    report = Path("reports/download.json")
    return read_json(report).get("sha256", "unknown") if report.exists() else "unknown"


if __name__ == "__main__":
    run_main(main, "train")
