"""The README and docs/ as a reader meets them: every link resolves, every page is reachable, the commands
they show are the ones CI runs and verl is tested with, and the README's Python example runs."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.conftest import QUESTIONS
from tests.fakes import FakeRetriever, FakeTeacher, Served
from tests.verl_load import BASE_OVERRIDES, CONFIG_OVERRIDES
from tests.verl_rules import check_output

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_MD = MarkdownIt("commonmark").enable("table")


def _tokens(page: Path) -> list[Token]:
    return _MD.parse(page.read_text(encoding="utf-8"))


def _inline_text(inline: Token) -> str:
    return "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(ch for ch in heading.lower()
                   if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 suffixes for repeated headings."""
    found: set[str] = set()
    tokens = _tokens(page)
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open":
            base = anchor = slug(_inline_text(inline))
            n = 0
            while anchor in found:
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def links(page: Path) -> list[str]:
    """Every link target of a page (code blocks and code spans are not links)."""
    return [child.attrGet("href") for token in _tokens(page) if token.type == "inline"
            for child in token.children or () if child.type == "link_open"]


@pytest.mark.parametrize(("heading", "anchor"), [
    pytest.param("Resume, failures and exit codes", "resume-failures-and-exit-codes", id="punctuation"),
    pytest.param("Look at the data: `hfdistill report`", "look-at-the-data-hfdistill-report", id="code-span"),
    pytest.param("Tiers (markers)", "tiers-markers", id="parentheses"),
    pytest.param("BM25 (embedded)", "bm25-embedded", id="digits"),
    pytest.param("The model's tool-call mistakes", "the-models-tool-call-mistakes", id="apostrophe"),
])
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for href in links(page):
        if re.match(r"[a-z]+:", href):  # https:, mailto: (outside the repository)
            continue
        path, _, anchor = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{href} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{href} (no heading with that anchor in {target.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to: {', '.join(broken)}"


@pytest.mark.parametrize("index", [ROOT / "README.md", ROOT / "docs" / "README.md"], ids=["README", "docs-index"])
def test_every_docs_page_is_linked_from_the_index(index: Path) -> None:
    linked = {(index.parent / href.partition("#")[0]).resolve() for href in links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"}
    assert not sorted(p.name for p in pages - linked), f"{index.relative_to(ROOT)} does not list every docs page"


def _code_blocks(page: Path, info: str) -> list[str]:
    return [t.content for t in _tokens(page) if t.type == "fence" and t.info.strip() == info]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip().startswith("python -m pytest")]
    assert len(ci) == 1, ".ci/run runs one test command"
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    shown = [line.strip() for line in quick_start.splitlines() if "pytest" in line and not line.startswith(" ")]
    assert ci == [line for line in shown if line.startswith("python -m pytest")], \
        "the README's quick start shows a test command other than the one .ci/run runs"


def test_the_verl_command_is_the_one_the_tests_load_with() -> None:
    (command,) = [block for block in _code_blocks(ROOT / "docs" / "verl.md", "bash") if "sft_trainer" in block]
    keys = set(re.findall(r"(data\.\w+=\S+)", command)) - {"data.train_files=$PWD/train_distilled.parquet"}
    assert keys == set(BASE_OVERRIDES) | set(CONFIG_OVERRIDES["qwen"]), \
        "docs/verl.md's trainer keys differ from those tests/verl_load.py loads the files with"


def test_the_readmes_python_example_runs(tmp_path: Path) -> None:
    from tests.conftest import write_verl_parquet

    (example,) = _code_blocks(ROOT / "README.md", "python")
    teacher, retriever = Served(FakeTeacher().app()), Served(FakeRetriever().app())
    try:
        script = (example.replace("http://localhost:8000/v1", f"{teacher.url}/v1")
                  .replace("http://127.0.0.1:8001/retrieve", f"{retriever.url}/retrieve"))
        assert script != example, "the README's example no longer names the servers this test replaces"
        write_verl_parquet(tmp_path / "train.parquet")
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        teacher.close()
        retriever.close()
    assert proc.returncode == 0, proc.stderr
    rows = check_output(tmp_path / "distilled.parquet")
    assert [r["question"] for r in rows] == [q for q, _ in QUESTIONS]
