"""init: resolve train.init_from to a concrete model and copy its bytes to models/init/.

Runs when train.init_from (or this code) changes. The resolution is pinned in
models/init/source.json, kept in git: a rerun (a fresh clone without the cached
bytes, `dvc repro -f`) fetches the pinned version, not where an alias points now,
so the graph settles after a fine-tune becomes champion. `gptpipe init --update`
resolves afresh, as `dvc update` does for imports. Not a data stage: a runs:/ or
models:/ source is downloaded from MLflow, and a source is checked with torch's
weights_only loader (scratch imports neither).
"""
from gptpipe import params
from gptpipe.errors import run_main
from gptpipe.init_resolve import materialise, read_pin
from gptpipe.init_source import INIT_DIR, SCRATCH


def main() -> None:
    p = params.load()
    pin = read_pin(p.train.init_from)
    source = materialise(p.train.init_from, pin)
    if source["init_from"] == SCRATCH:
        print(f"init: train.init_from is scratch (placeholders in {INIT_DIR}/)")
        return
    where = ", ".join(f"{k} {source[k]}" for k in ("run_id", "model_name", "version")
                      if source.get(k))
    how = "pinned in source.json" if pin else "resolved"
    print(f"init: {source['init_from']}{f' ({where})' if where else ''} {how} -> "
          f"{INIT_DIR}/, model sha256 {source['model_sha256'][:12]}")


if __name__ == "__main__":
    run_main(main, "init")
