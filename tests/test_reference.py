"""The command-line reference: docs/cli.md is what the parser renders, and lists every option `--help` lists;
the original script's table in docs/options.md matches the options the CLI keeps for it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from hfdistill.cli.main import SEED_OPTIONS, build_parser
from hfdistill.cli.reference import REGENERATE, render

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **subparsers.choices}


def _section(page: str, command: str) -> str:
    """The part of the reference page about one command (`` ## `hfdistill COMMAND` `` to the next heading)."""
    heading = f"## `hfdistill{' ' + command if command else ''}`\n"
    assert heading in page, f"docs/cli.md has no section {heading.strip()}"
    return page.split(heading, 1)[1].split("\n## ", 1)[0]


def test_docs_cli_md_is_what_the_parser_renders() -> None:
    written = (DOCS / "cli.md").read_text()
    assert written == render(), f"docs/cli.md is out of date with the argument parser; regenerate it: {REGENERATE}"


@pytest.mark.parametrize("command", list(_commands()), ids=lambda c: c or "hfdistill")
def test_every_option_of_help_is_in_the_reference(command: str) -> None:
    section = _section(render(), command)
    listed = [m.group(1) for line in _commands()[command].format_help().splitlines()
              if (m := re.match(r"  (-\S.*?)(?:\s{2,}|$)", line))]  # the option column of --help
    options = {o for names in listed for o in re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", names)} - {"-h", "--help"}
    assert options, "read no option from --help"
    missing = sorted(o for o in options if f"`{o}`" not in section)
    assert not missing, f"`hfdistill {command} --help` lists {missing}, the reference does not"


@pytest.mark.parametrize(("help_", "cell"), [
    pytest.param("a|b", "a\\|b", id="pipe-escaped"),
    pytest.param("parse <tool_call> here", "parse &lt;tool_call&gt; here", id="tag-is-text"),
    pytest.param("default %(default)s", "default 7", id="argparse-expansion"),
    pytest.param("one\n   line", "one line", id="one-line"),
])
def test_a_help_string_becomes_one_table_cell(help_: str, cell: str) -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int, default=7, help=help_)
    assert f"| `--n` | `N` | {cell} |" in render(parser)


def _seed_table() -> list[list[str]]:
    """The rows of the original script's table in docs/options.md, cells without their backticks."""
    text = (DOCS / "options.md").read_text()
    table = text.split("<!-- seed-options -->", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [r for r in rows[2:] if r]  # header and rule off


def test_the_original_scripts_table_matches_the_cli() -> None:
    documented = [(env, flag, default) for env, flag, default, _meaning in _seed_table()]
    expected = [(env, f"--{name}", "<input name>_distilled.parquet" if default is None else str(default))
                for env, name, _type, default in SEED_OPTIONS]
    assert documented == expected, "docs/options.md's table of the original script's options differs from " \
                                   "hfdistill.cli.main.SEED_OPTIONS"
