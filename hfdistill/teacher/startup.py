"""The teacher's start-up probes, before any rollout: every endpoint lists its models and answers a plain
one-token chat request, and is asked once whether it takes each field we add to that request (`tools=`,
vLLM's `priority`).

A server that answers only faults (down, HTML, the wrong JSON, 5xx) fails here, in one line, after the
probe's few retries. A field is refused when the plain request succeeds and the same request with the
field fails for good, whatever the server's wording: vLLM's 400 and a hosted endpoint's read the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from hfdistill.core.errors import ConfigError, ServiceError, TeacherError
from hfdistill.core.retry import is_transient, with_retries
from hfdistill.edge import Server, server_words
from hfdistill.teacher.pool import Endpoint
from hfdistill.teacher.replies import model_ids, refusal

if TYPE_CHECKING:  # the teacher calls in here from its `prepare`
    from hfdistill.teacher.client import Teacher

__all__ = ["prepare"]

log = logging.getLogger(__name__)
_MODELS_TIMEOUT = 30.0  # listing models is instant on a live server, whatever it is generating


async def prepare(teacher: Teacher) -> None:
    """Check every endpoint answers, learn the model id, and settle the protocol and priorities."""
    endpoints = teacher.pool.endpoints
    served = await asyncio.gather(*(_served_models(teacher, e) for e in endpoints))
    _settle_model(teacher, endpoints, served)
    for endpoint in endpoints:
        await _probe(teacher, endpoint, {})  # every fault but a refusal raises: the server cannot serve a run
    if teacher.mode is None:
        teacher.mode = "text" if await _refusing(teacher, {"tools": teacher.tools}, "tools=") else "native"
        log.info("tool-call protocol: %s", teacher.mode)
    elif teacher.mode == "native":
        refusing = await _refusing(teacher, {"tools": teacher.tools}, "tools=")
        if refusing:
            # Every rollout would fail the same way, and no rerun could fix it: a usage error, now.
            endpoint, said = refusing[0]
            raise ConfigError(f"--tool-call-mode native needs a teacher that takes tools=, and {endpoint.url} "
                              f"refuses them ({said}); start vLLM with --enable-auto-tool-choice --tool-call-parser "
                              "hermes, or use --tool-call-mode text (or auto)")
    if teacher.config.priority != "off":
        await _settle_priority(teacher)


def _settle_model(teacher: Teacher, endpoints: list[Endpoint], served: list[list[str]]) -> None:
    if teacher.model is None:
        ids = {models[0] for models in served}
        if len(ids) > 1:
            raise ConfigError(f"the teacher endpoints serve different models ({', '.join(sorted(ids))}); "
                              "pass --model")
        teacher.model = ids.pop()
        return
    for endpoint, models in zip(endpoints, served, strict=True):
        if teacher.model not in models:
            raise ConfigError(f"model {teacher.model!r} is not served at {endpoint.url} (it serves "
                              f"{', '.join(models)}); fix --model or VLLM_URL")


async def _served_models(teacher: Teacher, endpoint: Endpoint) -> list[str]:
    ids = await teacher.edge.call(endpoint.server, endpoint.models_url, parse=model_ids, refuse=refusal,
                                  timeout=min(_MODELS_TIMEOUT, teacher.config.retry.timeout),
                                  policy=teacher.config.retry.for_probe())
    if not ids:
        raise TeacherError(f"the teacher at {endpoint.url} serves no model; check the vLLM server")
    return ids


async def _settle_priority(teacher: Teacher) -> None:
    """Ask each server once whether it takes request priorities. vLLM refuses them under its default
    fcfs policy, a hosted endpoint may not know the field, and learning that from rollouts costs a
    refused request for every continuing turn sent before the first refusal is back: a whole window
    of them when a rerun resumes its conversations."""
    for endpoint, said in await _refusing(teacher, {"priority": -1}, "priority"):
        if teacher.config.priority == "on":
            raise ConfigError(f"--priority on needs a teacher that schedules by priority, and {endpoint.url} "
                              f"refuses request priorities ({said}); start vLLM with --scheduling-policy priority, "
                              "or pass --priority auto or off")
        teacher.send_no_priority(endpoint)


async def _refusing(teacher: Teacher, extra: dict[str, Any], field: str) -> list[tuple[Endpoint, str]]:
    """The endpoints that refuse the plain probe with `extra` added, each with what it said."""
    refusing = []
    for endpoint in teacher.pool.endpoints:
        said = await _probe(teacher, endpoint, extra)
        if said is not None:
            log.info("%s refuses %s (%s)", endpoint.url, field, said)
            refusing.append((endpoint, said))
    return refusing


async def _probe(teacher: Teacher, endpoint: Endpoint, extra: dict[str, Any]) -> str | None:
    """Send the one-token probe with `extra` (retrying faults in passing): None when it is answered, what the
    server said when it refuses `extra` for good. Without `extra`, a refusal raises like any fault."""
    body = orjson.dumps({"model": teacher.model, "messages": [{"role": "user", "content": "Say OK."}],
                         "max_tokens": 1, **extra})

    async def once(_n: int) -> None:
        await teacher.send(endpoint, body, refuse=_refused_field if extra else refusal)

    try:
        await with_retries(once, teacher.config.retry.for_probe(), what="teacher probe")
    except TeacherError as e:
        if not extra or e.transient:
            raise
        return str(e)
    return None


def _refused_field(server: Server, status: int, payload: bytes, retry_after: str | None) -> ServiceError | None:
    """A final refusal of a probe with an extra field, in the server's own words (the edge keeps the rest)."""
    if is_transient(status):
        return None
    return server.fail(f"http_{status}", f"HTTP {status}: {server_words(payload)}", transient=False)
