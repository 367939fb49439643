"""clean: decode, normalise and convert data/raw/ into one corpus file."""
from pathlib import Path

from gptpipe import params
from gptpipe.cleaning import clean_directory, source_names
from gptpipe.errors import run_main
from gptpipe.files import read_json, write_json, write_text

RAW_DIR = Path("data/raw")
DOWNLOAD_REPORT = Path("reports/download.json")  # names the user's files in errors
CORPUS = Path("data/clean/corpus.txt")
REPORT = Path("reports/clean.json")


def main() -> None:
    p = params.load().clean
    sources = source_names(read_json(DOWNLOAD_REPORT) if DOWNLOAD_REPORT.exists() else None)
    corpus, report = clean_directory(
        RAW_DIR, on_invalid_utf8=p.on_invalid_utf8, ascii_punctuation=p.ascii_punctuation,
        play_markdown=p.play_markdown, stage_directions=p.stage_directions,
        strip_gutenberg_=p.strip_gutenberg, encoding=p.encoding,
        max_replaced_fraction=p.max_replaced_fraction, sources=sources)
    write_text(CORPUS, corpus)
    write_json(REPORT, report.as_dict())
    if report.detected:  # a BOM, or clean.encoding: auto; per file in the report
        line = "clean: decoded as " + ", ".join(f"{codec} ({n})" for codec, n in
                                               sorted(report.encodings.items()))
        if report.boms:
            line += "; byte order marks: " + ", ".join(f"{bom} ({n})" for bom, n in
                                                      sorted(report.boms.items()))
        guessed = [e["confidence"] for e in report.detected if e["by"] == "detector"]
        if guessed:
            line += f"; lowest detector confidence {min(guessed):.2f}"
        print(f"{line} (see {REPORT})")
    if report.removed["escape_sequences"]:
        n = report.removed["escape_sequences"]
        print(f"clean: removed {n:,} terminal escape sequence{'' if n == 1 else 's'} "
              "(colours, cursor moves)")
    if report.replaced_chars:
        n = report.replaced_chars
        print(f"clean: warning: {n:,} undecodable byte sequence{'' if n == 1 else 's'} "
              f"became U+FFFD in {len(report.replaced)} of {report.files} "
              f"file{'' if report.files == 1 else 's'} "
              f"({report.replaced_chars / max(report.chars_in, 1):.4%} of the characters)")
    print(f"clean: {report.files} file{'' if report.files == 1 else 's'}, "
          f"{report.chars_in:,} -> {report.chars_out:,} characters, "
          f"{report.distinct_chars} distinct -> {CORPUS}")


if __name__ == "__main__":
    run_main(main, "clean")
