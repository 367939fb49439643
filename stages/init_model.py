"""init: resolve train.init_from to a concrete model and copy its bytes to models/init/.

Always runs (always_changed in dvc.yaml): an alias or a file can move without
any param changing. It rewrites the same bytes when the resolution is the same,
so the stages after it rerun only when the start model really changed. Not a
data stage: a runs:/ or models:/ source is downloaded from MLflow, and a source
is checked with torch's weights_only loader (scratch imports neither).
"""
from gptpipe import params
from gptpipe.errors import run_main
from gptpipe.init_resolve import materialise
from gptpipe.init_source import INIT_DIR, SCRATCH


def main() -> None:
    p = params.load()
    source = materialise(p.train.init_from)
    if source["init_from"] == SCRATCH:
        print(f"init: train.init_from is scratch (placeholders in {INIT_DIR}/)")
        return
    where = ", ".join(f"{k} {source[k]}" for k in ("run_id", "model_name", "version")
                      if source.get(k))
    print(f"init: {source['init_from']}{f' ({where})' if where else ''} -> {INIT_DIR}/, "
          f"model sha256 {source['model_sha256'][:12]}")


if __name__ == "__main__":
    run_main(main, "init")
