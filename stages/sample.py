"""sample: generate text from the trained model for each prompt, seeded."""
from pathlib import Path

from gptpipe import params
from gptpipe.allocator import keep_freed_memory
from gptpipe.errors import run_main
from gptpipe.files import write_json, write_text
from gptpipe.tracking.notes import SAMPLE_TAG, describe, first_line
from gptpipe.tracking.runs import Tracker, read_run_ref

TOKENIZER = Path("data/tokens/tokenizer.json")
MODEL = Path("models/model.pt")
RUN_REF = Path("reports/mlflow_run.json")
SAMPLES_MD, SAMPLES_JSON = Path("reports/samples.md"), Path("reports/samples.json")


def main() -> None:
    keep_freed_memory()  # each token reuses the last one's memory (allocator.py)
    p = params.load()
    s = p.sample
    run_id = read_run_ref(RUN_REF)["run_id"]
    tracker = Tracker()
    from gptpipe.devices import use_threads
    from gptpipe.inference import encode_prompt, load_model, sample_texts

    threads = use_threads(p.train.threads)  # one policy for train, evaluate and sample
    print(f"sample: {threads.describe()}", flush=True)

    model, tokenizer = load_model(MODEL, tokenizer_path=TOKENIZER)
    for j, prompt in enumerate(s.prompts):  # a bad prompt must not mark the run FAILED
        encode_prompt(tokenizer, prompt, f"sample.prompts[{j}]")
    with tracker.stage(run_id):
        tracker.log_params_once(run_id, p.flat(("sample",)))
        rows = sample_texts(model, tokenizer, s)
        write_json(SAMPLES_JSON, {"settings": p.flat(("sample",)), "samples": rows})
        write_text(SAMPLES_MD, _markdown(rows, s))
        tracker.log_artifact(run_id, SAMPLES_MD, "samples")
        tracker.log_artifact(run_id, SAMPLES_JSON, "samples")
        tracker.log_table(run_id, [{"prompt": r["prompt"], "temperature": s.temperature,
                                    "seed": r["seed"], "text": r["text"]} for r in rows],
                          "samples/table.json")
        # the Description's sample: the first prompt's text, its first line
        describe(tracker, run_id, {SAMPLE_TAG: first_line(rows[0]["prompt"] + rows[0]["text"])
                                   if rows else ""})
    print(f"sample: {len(rows)} samples -> {SAMPLES_MD}")


def _markdown(rows, s) -> str:
    out = [f"# Samples\n\ntemperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, "
           f"{s.max_new_tokens} new tokens, seed {s.seed}\n"]
    for i, row in enumerate(rows, 1):
        out.append(f"## Sample {i}: prompt {row['prompt']!r}\n\n```text\n"
                   f"{row['prompt']}{row['text']}\n```\n")
    return "\n".join(out)


if __name__ == "__main__":
    run_main(main, "sample", skip_teardown=True)  # it imports torch: errors.py
