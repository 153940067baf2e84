"""`open`: read a document a search returned, by the id or the title its observation showed (Tongyi's
`visit`, over the local corpus). The document's full text comes back, cut at `--open-max-chars` with a
note saying so; a name the corpus does not hold is the model's mistake, shown to it as an error."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.core.errors import ConfigError
from hfdistill.core.tools import ToolArgumentError, ToolContext, ToolOutput
from hfdistill.core.toolspec import DEFAULT_OPEN_MAX_CHARS

__all__ = ["OpenTool"]

# What models write: ours, and the names other agents' open/visit tools use (a string or a list of one).
_KEYS = ("document", "title", "id", "doc_id", "url", "urls")


@dataclass(frozen=True)
class OpenTool:
    """The open tool (see the module docstring); `max_chars` is where a long document is cut."""

    max_chars: int = DEFAULT_OPEN_MAX_CHARS
    name: str = "open"
    observation_template: str = "open_observation.j2"

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": "Opens a document that a search returned and reads its full text.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "document": {"type": "string",
                                     "description": "The title (or id) of a document a search returned."},
                    },
                    "required": ["document"],
                },
            },
        }

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        for key in _KEYS:
            value = raw.get(key)
            if isinstance(value, list) and value and isinstance(value[0], (str, int)):
                value = value[0]
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                return {"document": str(value).strip()}
        raise ToolArgumentError(f"{self.name} needs \"document\": the title or id of a document a search returned, "
                                f"got {json.dumps(raw, ensure_ascii=False)[:300]}")

    def fold(self, calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One document per turn: the first asked for."""
        return calls[0]

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        if context.open is None:
            raise ConfigError("the open tool reads the embedded corpus, and this run has none: pass --corpus")
        asked = arguments["document"]
        document = await context.open(asked, self.max_chars)
        observation = context.render(self.observation_template, asked=asked, max_chars=self.max_chars,
                                     document=document)
        return ToolOutput(observation, error=document is None)
