"""A vLLM logits processor that makes a random-weight model write a script (a test fixture, docs/testing.md).

Passed to the server as ``--logits-processors scripted:ScriptedCompletions`` with this directory on PYTHONPATH.
Per request it decodes the prompt once, picks the completion from `scenarios` (scenario named in the question,
turn = assistant turns already in the prompt; a question with no scenario gets the generic `researcher`), and
masks every logit but the next scripted token; after the script it forces <|im_end|>. Every decoded prompt is
appended (with its time) to the JSONL file named by `SCRIPT_PROMPT_LOG`, which is how the tests see exactly what
the teacher saw.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from scenarios import SCENARIOS, researcher, scenario_of, turn_of
from transformers import AutoTokenizer
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

_FALLBACK = "<think>\nNo script for this prompt.\n</think>\n\n<answer>unscripted</answer>"
_LOG_LOCK = threading.Lock()


class ScriptedCompletions(AdapterLogitsProcessor):
    """Forces the scripted completion of each request's scenario and turn."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.log_path = os.environ.get("SCRIPT_PROMPT_LOG")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the argmax: greedy sampling must apply it too

    def new_req_logits_processor(self, params: Any) -> Callable[[list[int], list[int], torch.Tensor], torch.Tensor]:
        script: list[int] = []

        def force(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if not output_ids and not script:
                script.extend(self._script_for(prompt_ids))
            n = len(output_ids)
            token = script[n] if n < len(script) else self.eos
            forced = torch.full_like(logits, float("-inf"))
            forced[token] = 0.0
            return forced

        return force

    def _script_for(self, prompt_ids: list[int]) -> list[int]:
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        scenario, turn = scenario_of(prompt), turn_of(prompt)
        steps = SCENARIOS.get(scenario or "")
        text = steps[min(turn, len(steps) - 1)] if steps else researcher(prompt, turn) or _FALLBACK
        if self.log_path:
            with _LOG_LOCK, open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"scenario": scenario, "turn": turn, "prompt": prompt, "t": time.time()},
                                    ensure_ascii=False) + "\n")
        return self.tokenizer.encode(text, add_special_tokens=False)
