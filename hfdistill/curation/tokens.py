"""`num_tokens`: a row's length as verl 0.9.1's `MultiTurnSFTDataset` tokenizes it for training.

verl does not tokenize the conversation whole: it renders each message on its own with the
tokenizer's chat template (`tools` only with the first message; tool-call `arguments` as the JSON
strings the file holds), strips the template's default system prompt from every later message that
is not a system message, and concatenates the ids (`_process_single_message`; a template that
needs a user message gets a dummy one, cut off again, as in `verl.utils.tokenizer.chat_template`).
That concatenation is what `data.max_length` truncates, so it is what is counted here.
transformers is an optional extra (`pip install "hfdistill[tokens]"`), imported when a tokenizer is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hfdistill.core.errors import ConfigError

__all__ = ["StudentTokens"]

_DUMMY_USER = [{"role": "user", "content": [{"type": "text", "text": ""}]}]


class StudentTokens:
    """Counts rows' tokens under one student tokenizer and its chat template."""

    def __init__(self, tokenizer: Any, name: str = "") -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._system = len(self._system_prompt())

    @classmethod
    def load(cls, name_or_dir: str) -> StudentTokens:
        """`AutoTokenizer.from_pretrained(name_or_dir)`; a missing extra or tokenizer is a ConfigError."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError('--student-tokenizer needs transformers: pip install "hfdistill[tokens]"') from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--student-tokenizer {name_or_dir!r} cannot be loaded ({str(e).splitlines()[0]}); "
                              "pass a local tokenizer directory or a Hub model id") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"--student-tokenizer {name_or_dir!r} has no chat template; verl renders every "
                              "conversation with one")
        return cls(tokenizer, name_or_dir)

    def _render(self, messages: list[dict[str, Any]], tools: Any = None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=False, tokenize=False)

    def _system_prompt(self) -> list[int]:
        # verl's extract_system_prompt_and_generation: what a template adds before a lone user turn.
        one = self._ids(self._render([{"role": "user", "content": ""}]))
        two = self._ids(self._render([{"role": "user", "content": ""}] * 2))
        return one[: -(len(two) - len(one))]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _message_text(self, message: dict[str, Any], tools: Any) -> tuple[str, int]:
        """The message rendered alone, and how many leading tokens verl cuts from it (a dummy user turn)."""
        try:
            return self._render([message], tools), 0
        except Exception:  # noqa: BLE001 - verl catches any failure here and retries with a dummy user turn
            prefix = self._ids(self._render(_DUMMY_USER, tools))
            return self._render([*_DUMMY_USER, message], tools), len(prefix)

    def count(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """The training length of each row (`messages`, `tools`), as verl computes it."""
        texts: list[str] = []
        cuts: list[int] = []
        owners: list[int] = []
        for r, row in enumerate(rows):
            for i, message in enumerate(row["messages"]):
                text, dummy = self._message_text(dict(message), row["tools"] if i == 0 else None)
                texts.append(text)
                cuts.append(dummy + (self._system if i != 0 and message["role"] != "system" else 0))
                owners.append(r)
        totals = [0] * len(rows)
        if texts:  # one batched call: the fast tokenizer encodes them in parallel
            for ids, cut, owner in zip(self._batch(texts), cuts, owners, strict=True):
                totals[owner] += max(len(ids) - cut, 0)
        return totals

    def _batch(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
