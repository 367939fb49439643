"""The docs stay readable and connected: the README is a five-minute read (at most
250 lines) whose two commands are the Makefile's, every link in README.md and in
docs/*.md resolves (files and #anchors), and no page tells the project's history."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
HISTORY = re.compile(r"\b(now|used to|previously|no longer|was changed|were changed|formerly|"
                     r"anymore|measured before)\b", re.IGNORECASE)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def _broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT) or not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    return broken


def test_readme_is_a_five_minute_read():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the reference "
        "material to a page in docs/ and link it")


def test_readme_links_to_docs_pages_that_exist():
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\((docs/[\w.-]+\.md)(?:#[^)]*)?\)", text))
    assert linked, "README.md links no docs/*.md page"
    missing = sorted(p for p in linked if not (ROOT / p).is_file())
    assert not missing, f"README.md links docs pages that do not exist: {missing}"
    unlinked = sorted(p.name for p in PAGES if f"docs/{p.name}" not in linked)
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = _broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_readme_gives_the_makefiles_two_commands():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no '{target}' target"
        assert re.search(rf"^make {target}\s+#", readme, flags=re.M), \
            f"README lacks `make {target}`"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_describe_the_project_as_it_is(page):
    """No version history ("now", "used to", "previously"...): that is git log's job."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
            if HISTORY.search(re.sub(r"`[^`]*`", "", line))]
    assert not hits, f"{page.relative_to(ROOT)}: history prose:\n" + "\n".join(hits)


def test_the_readme_code_map_names_every_module():
    """Each module of src/gptpipe/ (a folder's modules, or a folder as one row like
    `ci/`) has a row in README's code map, and each row names a module that exists."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([\w/]+(?:\.py|/))` \|", readme, flags=re.M))
    src = ROOT / "src" / "gptpipe"
    modules = {p.relative_to(src).as_posix() for p in src.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    covered = {m for m in modules if m in rows or m.split("/")[0] + "/" in rows}
    assert sorted(modules - covered) == [], "modules missing from README's code map"
    exists = {r for r in rows if (src / r).exists()}
    assert sorted(rows - exists) == [], "README's code map names modules that do not exist"
