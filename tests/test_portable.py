"""Nothing tracked names a path of one machine: no tracked file holds an absolute
home or work path, the README and docs/ cite no file outside the repo, the benchmark
presets name the lecture's corpus by URL and sha256, and the tests' tiny corpus
has the same form whether ../shared is there or not."""
from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
import yaml

from helpers import TINYSHAKESPEARE, play_text, tiny_corpus_note, tiny_text
from projects import ROOT

# An absolute path under a home or work folder of some machine (POSIX, macOS,
# Windows). System paths a tool really uses (/usr/bin/..., /etc/..., /dev/null)
# are no machine's own, so they are not matched; nor is a URL's path (a word
# character, dot or dash right before the slash).
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])/(?:work|home|root|Users|mnt|media)/[\w.-]"
    r"|(?<![\w])[A-Z]:\\(?:Users|Documents and Settings|work)\b", re.IGNORECASE)
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def machine_paths(text: str) -> list[str]:
    return [m.group(0) for m in MACHINE_PATH.finditer(text)]


def _posix(*parts: str) -> str:
    """An absolute POSIX path, built here so this file holds no such path itself."""
    return "/" + "/".join(parts)


@pytest.mark.parametrize("text, found", [
    (f"source: {_posix('work', 'shared', 'corpus.txt')}", True),
    (f"see {_posix('home', 'alice', 'corpus.txt')}", True),
    (f"cd {_posix('Users', 'bob', 'gptpipe')}", True),
    (f'path = "{_posix("root", ".cache", "x")}"', True),
    ("C:" + "\\".join(["", "Users", "carol", "gptpipe"]), True),
    (f"chromium at {_posix('usr', 'bin', 'chromium')}, certs in {_posix('etc', 'ssl')}", False),
    ("https://example.com" + _posix("home", "index.html") + " and ../shared/data", False),
    ("s:\\n in a regex, 12:30", False),
])
def test_the_machine_path_pattern(text, found):
    assert bool(machine_paths(text)) is found, text


def test_no_tracked_file_names_a_machines_absolute_path():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    offenders = []
    for name in filter(None, tracked):
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary (a png)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            offenders += [f"{name}:{number}: {hit}" for hit in machine_paths(line)]
    assert not offenders, "absolute paths of a machine in tracked files:\n" + "\n".join(offenders)


def test_the_docs_cite_no_file_outside_the_repo():
    outside = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for hit in re.findall(r"[^\s`(]*\.\./[^\s`)#]*", page.read_text(encoding="utf-8")):
            if not (page.parent / hit).resolve().is_relative_to(ROOT):
                outside.append(f"{page.relative_to(ROOT)}: {hit}")
    assert not outside, f"the docs point outside the repo: {outside}"


@pytest.mark.parametrize("preset", ["tinyshakespeare.yaml", "nanogpt_baby.yaml"])
def test_benchmark_presets_name_the_corpus_by_url_and_sha256(preset):
    data = yaml.safe_load((ROOT / "benchmarks" / preset).read_text())["data"]
    assert data["source"] == URL
    assert re.fullmatch(r"[0-9a-f]{64}", data["sha256"])
    if not TINYSHAKESPEARE.exists():
        pytest.skip("../shared/data/tinyshakespeare.txt is absent: the sha256 is not "
                    "compared with a local copy")
    assert hashlib.sha256(TINYSHAKESPEARE.read_bytes()).hexdigest() == data["sha256"]


def test_the_tiny_corpus_has_one_form_from_either_source():
    """Tests read tiny_text(); with or without ../shared it is plain text in
    SPEAKER: blocks, long enough, so no verdict depends on which was used."""
    print(tiny_corpus_note())
    sources = {"tiny_text": tiny_text(40_000), "play_text": play_text(40_000)}
    for name, text in sources.items():
        assert len(text) == 40_000, name
        assert text.isascii() and "\t" not in text, name
        speakers = re.findall(r"^[A-Z][A-Za-z ]+:$", text, re.M)
        assert len(speakers) > 100, (name, len(speakers))
        assert "#" not in text and "*" not in text, name  # no markdown left
    assert ("../shared" in tiny_corpus_note()) and (
        ("absent" in tiny_corpus_note()) != TINYSHAKESPEARE.exists())
