"""What the scripted teacher writes, per scenario and assistant turn (pure Python, shared by processor and tests).

A question names its scenario in brackets at its start, e.g. ``[search-1] What is the capital of France?``; the
processor finds it in the decoded prompt, counts the assistant turns already in the prompt, and forces the
completion below for that turn (the last one repeats). Completions are written the way Qwen3 writes them, so
whatever the chat template renders of an earlier turn can be compared with them byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["SCENARIOS", "answer", "call", "researcher", "scenario_of", "think", "turn_of"]

_SCENARIO_RE = re.compile(r"Question: \[([a-z0-9-]+)\]")


def think(thought: str, rest: str) -> str:
    return f"<think>\n{thought}\n</think>\n\n{rest}"


def call(arguments: dict[str, Any], name: str = "search") -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments, ensure_ascii=False)}}}\n</tool_call>'


def answer(text: str) -> str:
    return f"<answer>{text}</answer>"


_SEARCH = think("I should look this up.", call({"query_list": ["capital of France"]}))
_ANSWER = think("The passage says Paris.", answer("Paris"))
_LONG_THOUGHT = "I keep thinking about this question and it is hard. " * 60

SCENARIOS: dict[str, list[str]] = {
    "answer": [think("I know this one.", answer("Paris"))],
    "search-1": [_SEARCH, _ANSWER],
    "search-2": [_SEARCH, think("Let me check Paris itself.", call({"query_list": ["Paris city"]})), _ANSWER],
    "search-3": [_SEARCH, think("Next: Paris.", call({"query_list": ["Paris"]})),
                 think("And France.", call({"query_list": ["France"]})), _ANSWER],
    "two-calls": [think("Two searches at once.", call({"query_list": ["capital of France"]}) + "\n"
                        + call({"query_list": ["Paris"]})), _ANSWER],
    "malformed": [think("Search.", '<tool_call>\n{"name": "search", "arguments": {"query_list": ["capital of\n'
                                   '</tool_call>'), _SEARCH, _ANSWER],
    "trailing-comma": [think("Search.", '<tool_call>\n{"name": "search", "arguments": {"query_list": '
                                        '["capital of France",],}}\n</tool_call>'), _ANSWER],
    "unclosed": [think("Search.", '<tool_call>\n{"name": "search", "arguments": {"query_list": '
                                  '["capital of France"]}}'), _ANSWER],
    "unknown-tool": [think("Browse.", call({"url": "https://example.org"}, name="browse")), _SEARCH, _ANSWER],
    "query-string": [think("Tongyi style.", call({"query": "capital of France"})), _ANSWER],
    "unicode": [think("Ein Umlaut.", call({"query_list": ["Zürich café"]})), _ANSWER],
    # The chat template may open <think> in the prompt; the model then starts inside its thinking.
    "no-open-think": ["I start thinking without the tag.\n</think>\n\n" + call({"query_list": ["capital of France"]}),
                      _ANSWER],
    "cut-in-think": [_SEARCH, "<think>\n" + _LONG_THOUGHT],
    "cut-after-think": [think("Short thought.", "Paris is the capital, and let me say more. " * 60)],
    # After its call the model goes on to invent the result; the stop strings must cut it before the newline.
    "hallucinated-response": [think("Search.", call({"query_list": ["capital of France"]})
                                    + "\n<tool_response>\nParis, surely.\n</tool_response>"), _ANSWER],
    "no-tool-call": [think("Hmm.", "I think it is Paris.")],
    "max-turns": [_SEARCH],
    # Thinks until max_tokens: keeps requests open (the test that stops the server mid-run).
    "endless": ["<think>\n" + _LONG_THOUGHT * 10],
    # Calls to an MCP server's tools (tests/mcp_servers.py): nested arguments, a failing tool, arguments its schema
    # refuses (the model is told and goes on).
    "mcp-calculate": [think("Let me add them.", call({"operation": "add", "operands": [
        {"value": 1.5, "unit": "km"}, {"value": 2}]}, name="calculate")),
        think("The sum is 3.5 km.", answer("3.5 km"))],
    "mcp-fail": [think("Look it up.", call({"reason": "no page"}, name="fail")), _SEARCH, _ANSWER],
    "mcp-bad-arguments": [think("Divide.", call({"operation": "divide", "operands": []}, name="calculate")),
                          _ANSWER],
    # Context scenarios: the question is padded so the prompt is over, exactly at, or just under the limit.
    "overflow": [_ANSWER],
    "at-limit": [_ANSWER],
    "near-limit": [think(_LONG_THOUGHT, answer("Paris"))],
}


_QUESTION_RE = re.compile(r"Question: ?(.*?)<\|im_end\|>", re.DOTALL)
_TOP_TITLE_RE = re.compile(r"<tool_response>\n(?:Query: [^\n]*\n)?\[1\] ([^\n]*?): ")


def researcher(prompt: str, turn: int) -> str | None:
    """For a question with no scenario (e.g. HotpotQA's): search the question, then answer with the title of
    the first passage found (the seed observation format), or say it found nothing. None: not a question."""
    question = _QUESTION_RE.search(prompt)
    if question is None:
        return None
    if turn == 0:
        return think("I should search for this.", call({"query_list": [question.group(1).strip()]}))
    titles = _TOP_TITLE_RE.findall(prompt)
    if not titles:
        return think("The search found nothing.", "I could not find the answer.")
    return think(f"The best passage is about {titles[-1]}.", answer(titles[-1]))


def scenario_of(prompt: str) -> str | None:
    found = _SCENARIO_RE.search(prompt)
    return found.group(1) if found else None


def turn_of(prompt: str) -> int:
    """Assistant turns already in the prompt (the generation prompt's own header excluded)."""
    return prompt.count("<|im_start|>assistant") - 1
