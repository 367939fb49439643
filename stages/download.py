"""download: fetch data.source into data/raw/ and report what was fetched."""
from pathlib import Path

from gptpipe import params
from gptpipe.errors import run_main
from gptpipe.files import atomic_dir, sha256_bytes, write_json
from gptpipe.sources import check_no_credentials, fetch, redact, source_is_watched

RAW_DIR = Path("data/raw")
REPORT = Path("reports/download.json")


def plural(n: int, word: str, words: str = "") -> str:
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def main() -> None:
    p = params.load().data
    check_no_credentials(p.source)
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
        "skipped": result.skipped, "aliases": result.aliases,
        "duplicates": result.duplicates, "bytes": sum(f["bytes"] for f in result.files),
        "sha256": corpus_id,
    })
    notes = [plural(len(items), word, words) for items, word, words in (
        (result.aliases, "alias", "aliases"), (result.duplicates, "duplicate", ""))
        if items] + ([f"{len(result.skipped):,} skipped"] if result.skipped else [])
    print(f"download: {plural(len(result.files), 'file')}, "
          f"{sum(f['bytes'] for f in result.files):,} bytes -> {RAW_DIR}/"
          + (f" ({', '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    run_main(main, "download")
