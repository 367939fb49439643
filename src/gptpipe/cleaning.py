"""The clean stage: raw bytes in, one normalised UTF-8 corpus out.

The order matters: decode, then BOM and newlines, then terminal escape
sequences, overstrikes and control characters, then NFC (so later rules see composed characters), then the
structural rules (Gutenberg boilerplate, play markdown), then character-level
folding, then whitespace.

Decoding follows clean.encoding: utf-8, a named Python codec, or auto. Under
utf-8 and auto a byte order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE) decides the
codec; auto then tries the NUL bytes of BOM-less UTF-16/32, valid UTF-8, and last
charset-normalizer's guess, whose confidence goes in the report. Errors name the
file the user gave, not only its copy in data/raw/, and the BOM or the codec the
bytes look like.
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .sources import EMBEDDED

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
# Terminal escape sequences, removed whole (a lone ESC is a control character):
# CSI (ESC [ or 8-bit 0x9b; parameters, intermediates, a final byte: colours, cursor
# moves, erases), OSC (ESC ] or 0x9d up to BEL or ST, on one line: titles, hyperlinks)
# and charset designations (ESC ( B, which `tput sgr0` prints before ESC [ m).
_TERMINAL_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[()*+][0-9A-Za-z]")
# nroff's overstrikes: `_\bX` underlines X, `X\bX` emboldens it (`X\b_` also underlines).
_OVERSTRIKE = re.compile(r"_\x08(?=[^\x08\n])|([^\x08\n])\x08(?=\1)|(?<=[^\x08\n])\x08_")
_ASCII_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2212": "-", "\u2010": "-",
    "\u2011": "-", "\u2026": "...", "\u00a0": " ",
})
# Byte order marks, longest first: FF FE 00 00 is UTF-32 LE, not UTF-16 LE and a NUL.
# The codecs keep the BOM as U+FEFF, which clean_text removes and counts.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32 LE"),
         (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32 BE"),
         (b"\xef\xbb\xbf", "utf-8", "UTF-8"),
         (b"\xff\xfe", "utf-16-le", "UTF-16 LE"),
         (b"\xfe\xff", "utf-16-be", "UTF-16 BE"))
_WIDE_LABELS = {codec: label for _, codec, label in _BOMS}
_SNIFF_BYTES = 1 << 16
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
    encodings: Counter = field(default_factory=Counter)   # codec -> files
    boms: Counter = field(default_factory=Counter)        # byte order mark -> files
    detected: list = field(default_factory=list)          # auto: how each file was decoded
    replaced_chars: int = 0                               # U+FFFD put in by `replace`
    replaced: list = field(default_factory=list)          # files with replaced characters

    def as_dict(self) -> dict:
        return {"files": self.files, "chars_in": self.chars_in, "chars_out": self.chars_out,
                "distinct_chars": self.distinct_chars, "lines": self.lines,
                "removed": dict(sorted(self.removed.items())),
                "encodings": dict(sorted(self.encodings.items())),
                "boms": dict(sorted(self.boms.items())),
                "detected": self.detected, "replaced_chars": self.replaced_chars,
                "replaced": self.replaced}


@dataclass
class Decoded:
    text: str
    encoding: str
    by: str                  # param | bom | nul_bytes | utf-8 | detector
    confidence: float = 1.0  # the detector's: 1 - its mess ratio
    replaced: int = 0        # undecodable byte sequences that became U+FFFD
    bom: str | None = None   # by == "bom": which one, e.g. "UTF-16 LE"


_replaced_count = [0]


def _count_and_replace(exc: UnicodeError):
    """`errors="replace"` that also counts (codecs' error handlers are global)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _replaced_count[0] += 1
    return "\ufffd", exc.end


codecs.register_error("gptpipe.count_replace", _count_and_replace)


def _codec_name(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def bom_of(raw: bytes) -> tuple[str, str] | None:
    """(codec, label) of the byte order mark `raw` starts with, if any."""
    for bom, codec, label in _BOMS:
        if raw.startswith(bom):
            return codec, label
    return None


def wide_codec(raw: bytes) -> str | None:
    """The UTF-16/32 codec whose layout the NUL bytes of BOM-less `raw` follow, if any.

    ASCII-range text in UTF-16 LE has a NUL at every odd offset (BE: even), and
    spaces, digits and punctuation do so in any script; UTF-32 LE has two NULs at
    offsets 2 and 3 of each four bytes (BE: 0 and 1)."""
    sample = raw[:_SNIFF_BYTES]
    if not 2 <= sample.count(0) < len(sample):  # none, a stray one, or nothing else
        return None
    if len(sample) % 4 == 0:
        at = [sample[k::4].count(0) for k in range(4)]
        quarter = len(sample) // 4
        if at[3] == quarter and at[2] >= 0.9 * quarter:
            return "utf-32-le"
        if at[0] == quarter and at[1] >= 0.9 * quarter:
            return "utf-32-be"
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    units = len(sample) // 2
    if odd >= max(2, 0.05 * units) and even <= 0.1 * odd:
        return "utf-16-le"
    if even >= max(2, 0.05 * units) and odd <= 0.1 * even:
        return "utf-16-be"
    return None


def _no_bom_message(name: str, codec: str) -> str:
    where = {"utf-16-le": "at odd offsets", "utf-16-be": "at even offsets"}.get(
        codec, "in every four-byte unit")
    return (f"{name}: looks like {_WIDE_LABELS[codec]} without a BOM (NUL bytes {where}); "
            f"set clean.encoding: {codec}")


def guess_codec(raw: bytes) -> str | None:
    """A codec the bytes look like, for an error's hint: their NUL bytes' layout,
    else charset-normalizer's best guess when it recognised a language in it (on a
    few bytes it names any codec: `caf\xe9` is "cp1006")."""
    wide = wide_codec(raw)
    if wide is not None:
        return wide
    from charset_normalizer import from_bytes

    best = from_bytes(raw[:_SNIFF_BYTES]).best()
    return None if best is None or not best.coherence else best.encoding


def _pick_encoding(raw: bytes, name: str) -> tuple[str, str, float]:
    """clean.encoding: auto without a BOM: the NUL bytes of UTF-16/32, else valid
    UTF-8, else charset-normalizer's best guess."""
    wide = wide_codec(raw)
    if wide is not None:
        return wide, "nul_bytes", 1.0
    try:
        raw.decode("utf-8")
        return "utf-8", "utf-8", 1.0
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise UserError(f"{name}: clean.encoding: auto cannot tell this file's encoding "
                        "(it may be binary); set clean.encoding to its codec, e.g. cp1251")
    return best.encoding, "detector", round(1.0 - float(best.chaos), 4)


def _undecodable_message(raw: bytes, name: str, encoding: str, by: str, bom: str | None,
                         exc: UnicodeDecodeError) -> str:
    if by == "bom":
        return (f"{name}: starts with a {bom} byte order mark but is not valid {bom} at "
                f"byte offset {exc.start} ({exc.reason}); fix the file, set clean.encoding "
                "to its codec, or set clean.on_invalid_utf8: replace")
    where = (f"{name}: invalid {_codec_name(encoding)} at byte offset {exc.start} "
             f"(byte 0x{raw[exc.start]:02x}); ")
    fallback = "fix the file, or set clean.on_invalid_utf8: replace"
    if by != "param":
        return f"{where}set clean.encoding to the file's codec, {fallback}"
    guess = guess_codec(raw)
    if guess is None or codecs.lookup(guess).name == codecs.lookup(encoding).name:
        return (f"{where}set clean.encoding: auto (or the file's codec, e.g. cp1251), "
                f"{fallback}")
    if guess in _WIDE_LABELS:
        looks = f"it looks like {_WIDE_LABELS[guess]} without a BOM"
    else:
        looks = f"it looks like {guess} (charset-normalizer's guess)"
    return f"{where}{looks}: set clean.encoding: {guess} (or clean.encoding: auto), {fallback}"


def decode(raw: bytes, name: str, on_invalid: str, encoding: str = "utf-8",
           max_replaced_fraction: float = 1.0) -> Decoded:
    """`raw` as text; `name` is what errors call the file (the user's source)."""
    by, confidence, bom = "param", 1.0, None
    if encoding == "auto" or _is_utf8(encoding):
        found = bom_of(raw)
        if found is not None:
            (encoding, bom), by = found, "bom"
        elif encoding == "auto":
            encoding, by, confidence = _pick_encoding(raw, name)
        else:
            # UTF-16 of ASCII-range text is valid UTF-8 (NULs and letters): not an error
            # of the decoder, but dropping its NULs would be a guess
            wide = wide_codec(raw)
            if wide is not None:
                raise UserError(_no_bom_message(name, wide))
    try:
        return Decoded(raw.decode(encoding), encoding, by, confidence, bom=bom)
    except UnicodeDecodeError as exc:
        if on_invalid != "replace":
            raise UserError(_undecodable_message(raw, name, encoding, by, bom, exc)) from None
    _replaced_count[0] = 0
    text = raw.decode(encoding, errors="gptpipe.count_replace")
    replaced = _replaced_count[0]
    if replaced > max_replaced_fraction * len(text):
        raise UserError(f"{name}: {replaced:,} of {len(text):,} characters "
                        f"({replaced / len(text):.2%}) are not valid {_codec_name(encoding)} "
                        f"and would become U+FFFD, over clean.max_replaced_fraction="
                        f"{max_replaced_fraction:g}; set clean.encoding: auto (or the file's "
                        "codec, e.g. cp1251)")
    return Decoded(text, encoding, by, confidence, replaced, bom)


def strip_terminal_escapes(text: str, report: CleanReport) -> str:
    """Colour codes, cursor moves, titles: `ESC[1;31m` goes whole, not just its ESC."""
    text, n = _TERMINAL_ESCAPE.subn("", text)
    report.removed["escape_sequences"] += n
    return text


def resolve_overstrikes(text: str, report: CleanReport) -> str:
    """`_\bX` and `X\bX` (nroff's underline and bold, as in man pages) -> `X`."""
    out = _OVERSTRIKE.sub("", text)
    report.removed["overstrike_chars"] += len(text) - len(out)
    return out


def source_names(download_report: dict | None) -> dict[str, str]:
    """data/raw/ path -> the file the user gave (from reports/download.json)."""
    if not download_report:
        return {}
    source, kind = download_report.get("source", ""), download_report.get("kind")
    names = {}
    for entry in download_report.get("files", []):
        rel = entry["path"]
        if kind == "directory":
            names[rel] = f"{source.rstrip('/')}/{rel}"
        elif kind == EMBEDDED:
            names[rel] = f"the embedded plays' {rel}"
        else:
            names[rel] = source
    return names


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
    # Before control characters, or `ESC[32m` would leave `[32m`.
    text = strip_terminal_escapes(text, report)
    # Before NFC: a control char between a letter and its accent would leave them
    # uncomposed once dropped; overstrikes before that, or `_\bI` would become `_I`.
    text = resolve_overstrikes(text, report)
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
                    play_markdown: bool, stage_directions: bool, strip_gutenberg_: bool,
                    encoding: str = "utf-8", max_replaced_fraction: float = 0.001,
                    sources: dict[str, str] | None = None) -> tuple[str, CleanReport]:
    """Clean every file under `raw_dir` in sorted path order and join them.

    `sources` maps a path under `raw_dir` to the file the user gave, for errors."""
    report = CleanReport()
    paths = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    if not paths:
        raise UserError(f"{raw_dir}: no files to clean (run the download stage first)")
    pieces = []
    for path in paths:
        raw = path.read_bytes()
        rel = path.relative_to(raw_dir).as_posix()
        given = (sources or {}).get(rel)
        name = f"{given} (copied to {path})" if given else str(path)
        decoded = decode(raw, name, on_invalid_utf8, encoding, max_replaced_fraction)
        text = decoded.text
        report.encodings[decoded.encoding] += 1
        if decoded.bom:
            report.boms[decoded.bom] += 1
        if decoded.by in ("detector", "bom", "nul_bytes"):
            report.detected.append({"path": rel, "encoding": decoded.encoding,
                                    "by": decoded.by, "bom": decoded.bom,
                                    "confidence": decoded.confidence})
        if decoded.replaced:
            report.replaced_chars += decoded.replaced
            report.replaced.append({"path": rel, "replaced_chars": decoded.replaced,
                                    "chars": len(text)})
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
