"""A scripted LLM judge on loopback: an OpenAI-compatible chat server whose verdict depends on the prediction.

The verdict for a prediction is scripted (`verdicts`): "correct" / "incorrect" answer with the JSON the
prompt asks for, "bare:<word>" with prose ending in that word, "garbage" with no verdict at all, and
an int with that HTTP status. Unscripted predictions are judged by case-insensitive equality with the
first labeled answer. Calls are counted, so tests can prove a rerun asks nothing.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from aiohttp import web

JUDGE_MODEL = "judge/Qwen2.5-72B-Instruct"
_FIELD = re.compile(r"^(Predicted answer|Labeled answers?)[^:]*: (.*)$", re.M)


class FakeJudge:
    def __init__(self, model: str = JUDGE_MODEL) -> None:
        self.model = model
        self.verdicts: dict[str, str | int] = {}
        self.calls = 0  # chat requests received, answered or not
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        fields = dict(m.groups() for m in _FIELD.finditer(prompt))
        prediction = fields.get("Predicted answer", "")
        labeled = next((v for k, v in fields.items() if k.startswith("Labeled")), "")
        with self._lock:
            self.calls += 1
            self.prompts.append(prompt)
        verdict = self.verdicts.get(prediction)
        if verdict is None:
            verdict = "correct" if prediction.lower() == labeled.split(" | ")[0].lower() else "incorrect"
        if isinstance(verdict, int):
            return web.json_response({"object": "error", "message": "judge overloaded", "code": verdict},
                                     status=verdict)
        return web.json_response(_completion(self.model, _text(verdict, prediction)))


def _text(verdict: str, prediction: str) -> str:
    if verdict == "garbage":
        return "I am not sure what you are asking me."
    if verdict.startswith("bare:"):
        return f"The prediction {prediction!r} matches the label.\n\n{verdict[5:]}"
    return json.dumps({"rationale": f"{prediction} is {verdict} by the scripted judge", "judgement": verdict})


def _completion(model: str, text: str) -> dict[str, Any]:
    return {"id": "judge-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
