"""The LLM judge's pure side: its prompt, which rollouts are worth judging, and the parsing of its reply.

A verdict is journaled with the rollout's result (`core.records.Verdict`) together with the judge
that gave it (`JudgePrompt.spec`: the `--judge-model` asked for and a digest of the rendered prompt
template), so a rerun with the same judge never asks again, and a changed judge or prompt asks anew.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.core.templates import Templates

__all__ = ["JUDGE_TEMPLATE", "JudgePrompt", "judgeable", "parse_verdict"]

JUDGE_TEMPLATE = "judge_prompt.j2"
_SAMPLE = {"question": "Who designed the Eiffel Tower?", "prediction": "Gustave Eiffel",
           "golden_answers": ["Alexandre Gustave Eiffel", "Eiffel"]}
_THINK = re.compile(r"<think>.*?</think>", re.S)
_LAST_WORD = re.compile(r"\b(not\s+)?(correct|incorrect)\b\W*$", re.IGNORECASE)


def judgeable(prediction: str, golden_answers: Sequence[str]) -> bool:
    """Only a rollout with a prediction and something to compare it with is worth a judge call."""
    return bool(prediction.strip()) and any(str(g).strip() for g in golden_answers)


def parse_verdict(text: str) -> tuple[bool, str]:
    """(correct, rationale) from a judge's reply; ValueError when it holds no verdict.

    Accepts the JSON object the prompt asks for (also inside a code fence or after other text,
    `judgment` spelled either way), else a bare `Correct` / `Incorrect` as the reply's last word.
    """
    body = _THINK.sub("", text).strip()
    for candidate in _json_objects(body):
        value = candidate.get("judgement", candidate.get("judgment"))
        if isinstance(value, str) and value.strip().lower() in ("correct", "incorrect"):
            return value.strip().lower() == "correct", str(candidate.get("rationale") or "").strip()
    last = _LAST_WORD.search(body)
    if last:  # "... is not correct." reads as incorrect
        return (last.group(2).lower() == "correct") != bool(last.group(1)), body[: last.start()].strip()
    raise ValueError(f"no verdict in the judge's reply: {text[:200]!r}")


def _json_objects(text: str) -> list[dict[str, Any]]:
    """JSON objects in `text`, the last one first (a reasoning judge may quote the format before answering)."""
    found = []
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        end = text.rfind("}")
        while end > start:
            try:
                obj = json.loads(text[start:end + 1])
            except ValueError:
                end = text.rfind("}", start, end)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            break
    return found[::-1]


@dataclass(frozen=True)
class JudgePrompt:
    """The judge's prompt template, checked at start-up, and `spec`: which judge a verdict came from."""

    templates: Templates
    spec: str

    @classmethod
    def build(cls, templates: Templates, model: str | None) -> JudgePrompt:
        """Render the template once (a mistake fails here, before any call); `spec` digests the rendering
        and the judge model asked for (None: whatever the server lists)."""
        sample = templates.render(JUDGE_TEMPLATE, **_SAMPLE)
        digest = hashlib.sha256(json.dumps([model, sample]).encode()).hexdigest()[:16]
        return cls(templates, digest)

    def render(self, question: str, prediction: str, golden_answers: Sequence[str]) -> str:
        return self.templates.render(JUDGE_TEMPLATE, question=question, prediction=prediction,
                                     golden_answers=list(golden_answers))
