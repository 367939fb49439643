"""The clean stage: raw bytes in, one normalised UTF-8 corpus out.

The order matters: decode, then BOM and newlines, then NFC (so later rules see
composed characters), then the structural rules (Gutenberg boilerplate, play
markdown), then character-level folding, then whitespace.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

_GUTENBERG_START = re.compile(
    r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(
    r"^(\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE)
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*\s*$")
_HEADING = re.compile(r"^#{1,6}\s")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|~])")
_EMPHASIS = re.compile(r"[*_]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
_ASCII_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2212": "-", "\u2010": "-",
    "\u2011": "-", "\u2026": "...", "\u00a0": " ",
})
# A play is markdown with many `**SPEAKER**` lines; other .md files are left alone.
_MIN_SPEAKERS_FOR_PLAY = 10


@dataclass
class CleanReport:
    files: int = 0
    chars_in: int = 0
    chars_out: int = 0
    distinct_chars: int = 0
    lines: int = 0
    removed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"files": self.files, "chars_in": self.chars_in, "chars_out": self.chars_out,
                "distinct_chars": self.distinct_chars, "lines": self.lines,
                "removed": dict(sorted(self.removed.items()))}


def decode(raw: bytes, name: str, on_invalid: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if on_invalid == "replace":
            return raw.decode("utf-8", errors="replace")
        raise UserError(f"{name}: invalid UTF-8 at byte offset {exc.start} "
                        f"(byte 0x{raw[exc.start]:02x}); fix the file or set "
                        "clean.on_invalid_utf8: replace") from None


def strip_gutenberg(text: str, report: CleanReport) -> str:
    start = _GUTENBERG_START.search(text)
    if start:
        report.removed["gutenberg_header_chars"] += start.end()
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        report.removed["gutenberg_footer_chars"] += len(text) - end.start()
        text = text[:end.start()]
    return text


def looks_like_play(text: str) -> bool:
    count = 0
    for line in text.split("\n"):
        if _SPEAKER.match(line):
            count += 1
            if count >= _MIN_SPEAKERS_FOR_PLAY:
                return True
    return False


def _is_direction_start(line: str) -> bool:
    bare = line.strip()
    if bare.startswith("**"):
        return False
    if bare.startswith(("_", "*")):
        return True
    # `[To ROBIN]_`: an aside whose opening emphasis the source lost
    return bare.startswith("[") and bare.rstrip("_*").endswith("]")


def _ends_direction(line: str) -> bool:
    return line.rstrip().endswith(("_", "*", "]"))


def play_markdown_to_dialogue(text: str, keep_directions: bool,
                              report: CleanReport) -> str:
    """`**SPEAKER**` + speech lines -> `SPEAKER:` + speech, one blank line between."""
    out: list[str] = []
    in_direction = False
    for raw_line in text.split("\n"):
        line = _ESCAPE.sub(r"\1", raw_line).rstrip()
        if in_direction or (line and _is_direction_start(line)):
            in_direction = not _ends_direction(line)
            report.removed["stage_direction_lines"] += 0 if keep_directions else 1
            if keep_directions:
                out.append(_EMPHASIS.sub("", line).strip())
            continue
        if not line:
            continue  # speeches are re-separated below; blank lines carry no meaning
        if _HEADING.match(line):
            report.removed["heading_lines"] += 1
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            out.append("")
            out.append(speaker.group(1).strip() + ":")
            continue
        out.append(_EMPHASIS.sub("", line))
    return "\n".join(out).strip("\n") + "\n"


def drop_control_chars(text: str, report: CleanReport) -> str:
    kept = [c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc"]
    report.removed["control_chars"] += len(text) - len(kept)
    return "".join(kept)


def clean_text(text: str, report: CleanReport, *, ascii_punctuation: bool,
               play_markdown: bool, stage_directions: bool, strip_gutenberg_: bool,
               is_markdown: bool) -> str:
    # A BOM anywhere (files concatenated with `cat` keep theirs) is not corpus text.
    report.removed["bom"] += text.count("\ufeff")
    text = text.replace("\ufeff", "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Before NFC: a control char between a letter and its accent would leave them
    # uncomposed once dropped.
    text = drop_control_chars(text, report)
    text = unicodedata.normalize("NFC", text)
    if strip_gutenberg_:
        text = strip_gutenberg(text, report)
    if play_markdown and is_markdown and looks_like_play(text):
        report.removed["play_markdown_files"] += 1
        text = play_markdown_to_dialogue(text, stage_directions, report)
    if ascii_punctuation:
        text = text.translate(_ASCII_FOLD)
    # Dropped markup (`e_\u0301`) can also leave an accent beside its letter.
    text = unicodedata.normalize("NFC", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    before = len(text)
    text = _BLANK_RUNS.sub("\n\n", text).strip("\n")
    report.removed["blank_line_chars"] += before - len(text)
    return text + "\n" if text else ""


def clean_directory(raw_dir: Path, *, on_invalid_utf8: str, ascii_punctuation: bool,
                    play_markdown: bool, stage_directions: bool,
                    strip_gutenberg_: bool) -> tuple[str, CleanReport]:
    """Clean every file under `raw_dir` in sorted path order and join them."""
    report = CleanReport()
    paths = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    if not paths:
        raise UserError(f"{raw_dir}: no files to clean (run the download stage first)")
    pieces = []
    for path in paths:
        raw = path.read_bytes()
        text = decode(raw, str(path), on_invalid_utf8)
        report.files += 1
        report.chars_in += len(text)
        cleaned = clean_text(text, report, ascii_punctuation=ascii_punctuation,
                             play_markdown=play_markdown, stage_directions=stage_directions,
                             strip_gutenberg_=strip_gutenberg_,
                             is_markdown=path.suffix.lower() in (".md", ".markdown"))
        if cleaned:
            pieces.append(cleaned)
    corpus = "\n".join(pieces)
    if not corpus.strip():
        raise UserError(f"{raw_dir}: nothing left after cleaning (the corpus is empty "
                        "or whitespace only)")
    report.chars_out = len(corpus)
    report.distinct_chars = len(set(corpus))
    report.lines = corpus.count("\n")
    return corpus, report
