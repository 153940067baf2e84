"""The vLLM server's flags: a small table per model family, priority scheduling always, the context length,
and the user's `--serve-args` on top (an override replaces the flag and its values).

A flag and its values form one option (`--tool-call-parser hermes`); `--x=v` is read as `--x v`, `--a_b` as
`--a-b` (vLLM reads both spellings), and `--no-x` is the same option as `--x` (vLLM's boolean flags take
both), so `--serve-args "--no-enable-auto-tool-choice"` turns off what the table turned on.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from hfdistill.core.errors import ConfigError

__all__ = ["ALWAYS", "FAMILIES", "Family", "Option", "family_of", "merge", "parse_options", "render",
           "server_flags"]

Option = tuple[str, tuple[str, ...]]  # ("--tool-call-parser", ("hermes",))


@dataclass(frozen=True)
class Family:
    """Models served with the same flags: known by config.json's `model_type`, or by a word of their name."""

    name: str
    model_types: tuple[str, ...]
    name_words: tuple[str, ...]
    flags: tuple[str, ...]


# Qwen3 writes Hermes-style <tool_call> JSON and thinks in <think>; Tongyi-DeepResearch-30B-A3B is a Qwen3-MoE.
_QWEN3 = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")
FAMILIES: tuple[Family, ...] = (
    Family("qwen3", ("qwen3", "qwen3_moe"), ("qwen3", "tongyi-deepresearch"), _QWEN3),
)
# hfdistill sends continuing conversations a higher priority (--priority); a server without this refuses it.
ALWAYS = ("--scheduling-policy", "priority")
# Set by hfdistill from its own options; an override would point the pool at a server that is not there.
_OURS = {"--model": "--serve MODEL", "--host": "--serve-host", "--port": "--serve-port",
         "--tensor-parallel-size": "--serve-tensor-parallel", "-tp": "--serve-tensor-parallel",
         "--data-parallel-size": "nothing: hfdistill starts one server per replica (docs/vllm.md says why)",
         "-dp": "nothing: hfdistill starts one server per replica (docs/vllm.md says why)"}
_NEGATIVE_NUMBER = re.compile(r"-\d")


def family_of(model: str, model_type: str | None) -> Family | None:
    """The family of a model: by its configuration's model_type, else by its name (None: no table entry)."""
    for family in FAMILIES:
        if model_type is not None and model_type in family.model_types:
            return family
    name = model.lower()
    if model_type is None:
        return next((f for f in FAMILIES if any(word in name for word in f.name_words)), None)
    return None


def parse_options(tokens: Sequence[str]) -> list[Option]:
    """Flags and their values, in order: `--x=v` as `--x v`; a value that looks like a flag is not one
    unless it is a negative number."""
    options: list[Option] = []
    for token in tokens:
        if token.startswith("-") and not _NEGATIVE_NUMBER.match(token):
            name, eq, value = token.partition("=")
            options.append((name, (value,) if eq else ()))
        elif options:
            name, values = options[-1]
            options[-1] = (name, (*values, token))
        else:
            raise ConfigError(f"--serve-args must start with a flag, got {token!r}")
    return options


def _key(flag: str) -> str:
    """What makes two spellings the same option: dashes, not underscores; `--no-x` is `--x`."""
    key = flag.replace("_", "-")
    return "--" + key[len("--no-"):] if key.startswith("--no-") else key


def merge(base: Sequence[Option], overrides: Sequence[Option]) -> list[Option]:
    """`base` with each override replacing the option of the same key (where it stood), or appended."""
    merged = list(base)
    for flag, values in overrides:
        at = next((i for i, (f, _) in enumerate(merged) if _key(f) == _key(flag)), None)
        if at is None:
            merged.append((flag, values))
        else:
            merged[at] = (flag, values)
    return merged


def render(options: Sequence[Option]) -> list[str]:
    return [part for flag, values in options for part in (flag, *values)]


def server_flags(model: str, model_type: str | None, *, max_model_len: int | None, tensor_parallel: int,
                 serve_args: str = "") -> list[str]:
    """Every flag of the vLLM server but --model, --host and --port: the family's, priority scheduling, the
    context length, the tensor parallelism, then the user's `serve_args` on top."""
    family = family_of(model, model_type)
    base = parse_options([*(family.flags if family else ()), *ALWAYS])
    if max_model_len is not None:
        base.append(("--max-model-len", (str(max_model_len),)))
    if tensor_parallel > 1:
        base.append(("--tensor-parallel-size", (str(tensor_parallel),)))
    try:
        tokens = shlex.split(serve_args)
    except ValueError as e:
        raise ConfigError(f"--serve-args cannot be read as a command line ({e}): {serve_args!r}") from None
    overrides = parse_options(tokens)
    for flag, _ in overrides:
        instead = _OURS.get(_key(flag)) or _OURS.get(flag)
        if instead is not None:
            raise ConfigError(f"--serve-args may not set {flag}: hfdistill sets it; use {instead}")
    return render(merge(base, overrides))
