"""The command-line reference (`docs/cli.md`): every command's options, rendered from the parser.

`python -m hfdistill.cli.reference > docs/cli.md` regenerates the file; `tests/test_reference.py`
fails when the file and the parser disagree, so the reference cannot drift from `--help`.
argparse has no public way to list a parser's options: this reads its `_actions`, `_action_groups`
and the subparsers' `_choices_actions`, the attributes its own help formatter reads (unchanged in
shape since Python 3.2). It only reads the parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

__all__ = ["REGENERATE", "render"]

REGENERATE = "python -m hfdistill.cli.reference > docs/cli.md"

_HEADER = f"""\
# Command-line reference

<!-- Generated from the argument parser; do not edit by hand. Regenerate: {REGENERATE} -->

Every command and option, as `hfdistill COMMAND --help` lists them, generated from the argument
parser; a test fails when this page and the parser disagree. Regenerate it with:

```bash
{REGENERATE}
```

Flags of the form `--snake_case` are also accepted as `--dash-case` (both spellings are listed).
The flags and environment variables of the original script, and the other environment variables
hfdistill reads, are in [options.md](options.md).
"""


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference page, as markdown."""
    if parser is None:
        from hfdistill.cli.main import build_parser

        parser = build_parser()
    commands = _commands(parser)
    lines = [_HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{_anchor(parser.prog, name)}) | {_cell(help_)} |" for name, help_, _ in commands]
    lines += ["", f"## `{parser.prog}`", "", *_groups(parser)]
    for name, help_, sub in commands:
        lines += [f"## `{parser.prog} {name}`", "", _sentence(sub.description or help_), "", *_groups(sub)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each command, in the order `--help` lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(choice.dest, choice.help or "", action.choices[choice.dest])
                      for choice in action._choices_actions]
    return found


def _groups(parser: argparse.ArgumentParser) -> Iterator[str]:
    """One table per argument group (positional arguments, options, then the named groups)."""
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
                   and a.help != argparse.SUPPRESS]
        if not actions:
            continue
        yield f"**{_text(group.title or '')}**"
        yield ""
        yield "| option | value | meaning |"
        yield "|---|---|---|"
        for action in actions:
            yield f"| {_names(action)} | {_value(action)} | {_cell(_help(action, parser.prog))} |"
        yield ""


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    return ", ".join(f"`{name}`" for name in action.option_strings)


def _value(action: argparse.Action) -> str:
    """What the option takes: its choices, its metavar, or nothing for a switch."""
    if not action.option_strings or action.nargs == 0:
        return ""
    if action.choices is not None:
        return "`" + "\\|".join(str(c) for c in action.choices) + "`"
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"`{metavar}`"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # as argparse's help formatter expands it
        text = text % {**vars(action), "prog": prog}
    return text


def _text(text: str) -> str:
    """Prose from the parser, safe in markdown: `<tool_call>` is text, not an HTML tag."""
    return " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;")


def _sentence(text: str) -> str:
    text = _text(text)
    return text if text.endswith((".", ")")) else f"{text[:1].upper()}{text[1:]}."


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _anchor(prog: str, name: str) -> str:
    """The anchor GitHub gives the heading `` `prog name` ``."""
    return f"{prog}-{name}".lower()


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
