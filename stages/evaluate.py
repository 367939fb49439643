"""evaluate: loss, perplexity and bits per character over the whole val split, and
over the train split's evenly spread evaluate.train_windows windows (0: all of it).

Follows train.autocast (auto: bf16 where this machine runs it fast); bf16 moves
the loss by ~1e-4 nats, measured by benchmarks/run.py --only evaluate."""
from pathlib import Path

from gptpipe import params, tokenizers
from gptpipe.allocator import keep_freed_memory
from gptpipe.arrays import load_tokens
from gptpipe.errors import run_main
from gptpipe.files import sha256_file, write_json
from gptpipe.tracking.datasets import dataset_digest
from gptpipe.tracking.notes import describe
from gptpipe.tracking.registry import promote, shipped_model_id
from gptpipe.tracking.runs import Tracker, read_run_ref

TRAIN, VAL = Path("data/split/train.npy"), Path("data/split/val.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
MODEL = Path("models/model.pt")
RUN_REF = Path("reports/mlflow_run.json")
METRICS = Path("reports/metrics.json")


def main() -> None:
    keep_freed_memory()  # each batch reuses the last one's memory (allocator.py)
    p = params.load()
    ref = read_run_ref(RUN_REF)
    run_id = ref["run_id"]
    tracker = Tracker()
    from gptpipe.devices import choose_autocast, use_threads
    from gptpipe.evaluation import split_metrics, subset_nats, total_nats, windows_total
    from gptpipe.inference import load_model

    threads = use_threads(p.train.threads)  # one policy for train, evaluate and sample
    model, _ = load_model(MODEL, tokenizer_path=TOKENIZER)
    tokenizer = tokenizers.load(TOKENIZER)
    device = next(model.parameters()).device
    amp = choose_autocast(device, p.train.autocast)
    print(f"evaluate: {amp.name} ({amp.reason}), {threads.describe()}", flush=True)
    metrics = {}
    with tracker.stage(run_id):
        tracker.log_params_once(run_id, p.flat(("evaluate",)))
        tracker.set_tags(run_id, {"gptpipe.evaluate_autocast": amp.name})
        for split, path in (("val", VAL), ("train", TRAIN)):
            data = load_tokens(path)
            threads.apply()  # a stage started or ended meanwhile: follow it
            block = model.cfg.block_size
            total = windows_total(len(data) - 1, block)
            wanted = p.evaluate.train_windows if split == "train" else 0
            extra = {}
            if 0 < wanted < (len(data) - 1) // block:  # fewer than every full window
                nats, n_targets, starts, stderr = subset_nats(
                    model, data, wanted, p.evaluate.batch_size, device, amp.dtype)
                n_chars = sum(len(tokenizer.decode(data[s + 1:s + 1 + block].tolist()))
                              for s in starts.tolist())
                extra = {"windows_scored": wanted, "windows_total": total,
                         "loss_stderr": stderr}
            else:
                nats, n_targets = total_nats(model, data, p.evaluate.batch_size, device,
                                             amp.dtype)
                n_chars = len(tokenizer.decode(data[1:].tolist()))
                if split == "train":
                    extra = {"windows_scored": total, "windows_total": total,
                             "loss_stderr": 0.0}
            values = {**split_metrics(nats, n_targets, n_chars), **extra}
            metrics[split] = {k: round(v, 6) if isinstance(v, float) else v
                              for k, v in values.items()}
            scored = (f" ({extra['windows_scored']:,} of {total:,} windows, standard "
                      f"error {extra['loss_stderr']:.4f})" if extra else "")
            print(f"evaluate: {split}: loss {metrics[split]['loss']:.4f}, "
                  f"bits/char {metrics[split]['bits_per_char']:.4f}{scored}", flush=True)
        write_json(METRICS, metrics)
        # on the run, and on its shipped LoggedModel (the Models tab ranks by them),
        # each split's metrics measured on that split's dataset
        model_id = shipped_model_id(tracker, ref)
        for split, path in (("val", VAL), ("train", TRAIN)):
            tracker.log_metrics(run_id, [(f"{split}.{key}", value, 0)
                                         for key, value in metrics[split].items()],
                                model_id=model_id,
                                dataset=(split, dataset_digest(sha256_file(path))))
        tracker.log_artifact(run_id, METRICS, "metrics")
        outcome = promote(tracker, run_id, metrics["val"]["bits_per_char"])
        if outcome:
            print(f"evaluate: {outcome}")
        describe(tracker, run_id)


if __name__ == "__main__":
    run_main(main, "evaluate", skip_teardown=True)  # it imports torch: errors.py
