"""clean: decode, normalise and convert data/raw/ into one corpus file."""
from pathlib import Path

from gptpipe import params
from gptpipe.cleaning import clean_directory
from gptpipe.errors import run_main
from gptpipe.files import write_json, write_text

RAW_DIR = Path("data/raw")
CORPUS = Path("data/clean/corpus.txt")
REPORT = Path("reports/clean.json")


def main() -> None:
    p = params.load().clean
    corpus, report = clean_directory(
        RAW_DIR, on_invalid_utf8=p.on_invalid_utf8, ascii_punctuation=p.ascii_punctuation,
        play_markdown=p.play_markdown, stage_directions=p.stage_directions,
        strip_gutenberg_=p.strip_gutenberg)
    write_text(CORPUS, corpus)
    write_json(REPORT, report.as_dict())
    print(f"clean: {report.files} files, {report.chars_in:,} -> {report.chars_out:,} "
          f"characters, {report.distinct_chars} distinct -> {CORPUS}")


if __name__ == "__main__":
    run_main(main, "clean")
