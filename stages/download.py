"""download: fetch data.source into data/raw/ and report what was fetched."""
from pathlib import Path

from gptpipe import params
from gptpipe.errors import run_main
from gptpipe.files import atomic_dir, sha256_bytes, write_json
from gptpipe.sources import fetch, redact, source_is_watched

RAW_DIR = Path("data/raw")
REPORT = Path("reports/download.json")


def main() -> None:
    p = params.load().data
    print(f"download: {redact(p.source)}", flush=True)
    if not source_is_watched(p.source):
        print(f"download: note: DVC does not watch {redact(p.source)}; after editing it, "
              "run `dvc repro -f download` (or keep your text in corpus/)", flush=True)
    with atomic_dir(RAW_DIR) as tmp:
        result = fetch(p.source, tmp, sha256=p.sha256, max_bytes=p.max_bytes,
                       timeout_s=p.timeout_s, retries=p.retries)
    # One file: its own sha256, the value data.sha256 expects. Several: a manifest hash.
    corpus_id = result.files[0]["sha256"] if len(result.files) == 1 else sha256_bytes(
        "".join(f"{f['path']}\0{f['sha256']}\n" for f in result.files).encode())
    write_json(REPORT, {
        "source": redact(p.source), "kind": result.kind, "files": result.files,
        "skipped": result.skipped, "bytes": sum(f["bytes"] for f in result.files),
        "sha256": corpus_id,
    })
    print(f"download: {len(result.files)} files, {sum(f['bytes'] for f in result.files):,} "
          f"bytes -> {RAW_DIR}/" + (f" ({len(result.skipped)} skipped)" if result.skipped else ""))


if __name__ == "__main__":
    run_main(main, "download")
