"""The teacher's start-up probes, before any rollout: every endpoint lists its models, is asked once whether it
takes each field we add to a plain one-token chat request (`tools=`, vLLM's `priority`), and has answered a
chat request.

A server that answers only faults (down, HTML, the wrong JSON, 5xx) fails here, in one line, after the
probe's few retries. A field is refused when the request with it fails for good and the same request
without it succeeds, whatever the server's wording: vLLM's 400 and a hosted endpoint's read the same. The
plain request is sent only to tell a refused field from a server that refuses everything (a wrong API
key), or to an endpoint no field was asked of.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from hfdistill.core.errors import ConfigError, ServiceError, TeacherError
from hfdistill.core.retry import is_transient, with_retries
from hfdistill.edge import Refuse, Server, server_words
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
    answered: set[Endpoint] = set()  # endpoints that answered a chat request
    if teacher.mode is None:
        refusing = await _refusing(teacher, {"tools": teacher.tools}, "tools=", answered)
        teacher.mode = "text" if refusing else "native"
        log.info("tool-call protocol: %s", teacher.mode)
    elif teacher.mode == "native":
        refusing = await _refusing(teacher, {"tools": teacher.tools}, "tools=", answered)
        if refusing:
            # Every rollout would fail the same way, and no rerun could fix it: a usage error, now.
            endpoint, said = refusing[0]
            raise ConfigError(f"--tool-call-mode native needs a teacher that takes tools=, and {endpoint.url} "
                              f"refuses them ({said}); start vLLM with --enable-auto-tool-choice --tool-call-parser "
                              "hermes, or use --tool-call-mode text (or auto)")
    if teacher.config.priority != "off":
        await _settle_priority(teacher, answered)
    for endpoint in endpoints:
        if endpoint not in answered:  # every fault but a refusal raises: the server cannot serve a run
            await _probe(teacher, endpoint, {}, refusal)


def _settle_model(teacher: Teacher, endpoints: list[Endpoint], served: list[dict[str, int | None]]) -> None:
    """The model id (--model, else the one every endpoint lists first) and its context window (the
    smallest any endpoint lists; unknown when one lists none)."""
    if teacher.model is None:
        ids = {next(iter(models)) for models in served}
        if len(ids) > 1:
            raise ConfigError(f"the teacher endpoints serve different models ({', '.join(sorted(ids))}); "
                              "pass --model")
        teacher.model = ids.pop()
    for endpoint, models in zip(endpoints, served, strict=True):
        if teacher.model not in models:
            raise ConfigError(f"model {teacher.model!r} is not served at {endpoint.url} (it serves "
                              f"{', '.join(models)}); fix --model or VLLM_URL")
    windows = [w for models in served if (w := models[teacher.model]) is not None]
    teacher.served.max_model_len = min(windows) if len(windows) == len(served) else None


async def _served_models(teacher: Teacher, endpoint: Endpoint) -> dict[str, int | None]:
    ids = await teacher.edge.call(endpoint.server, endpoint.models_url, parse=model_ids, refuse=refusal,
                                  timeout=min(_MODELS_TIMEOUT, teacher.config.retry.timeout),
                                  policy=teacher.config.retry.for_probe())
    if not ids:
        raise TeacherError(f"the teacher at {endpoint.url} serves no model; check the vLLM server")
    return ids


async def _settle_priority(teacher: Teacher, answered: set[Endpoint]) -> None:
    """Ask each server once whether it takes request priorities. vLLM refuses them under its default
    fcfs policy, a hosted endpoint may not know the field, and learning that from rollouts costs a
    refused request for every continuing turn sent before the first refusal is back: a whole window
    of them when a rerun resumes its conversations."""
    for endpoint, said in await _refusing(teacher, {"priority": -1}, "priority", answered):
        if teacher.config.priority == "on":
            raise ConfigError(f"--priority on needs a teacher that schedules by priority, and {endpoint.url} "
                              f"refuses request priorities ({said}); start vLLM with --scheduling-policy priority, "
                              "or pass --priority auto or off")
        teacher.send_no_priority(endpoint)


async def _refusing(teacher: Teacher, extra: dict[str, Any], field: str,
                    answered: set[Endpoint]) -> list[tuple[Endpoint, str]]:
    """The endpoints that refuse the probe with `extra` while they answer it without, each with what it said."""
    refusing = []
    for endpoint in teacher.pool.endpoints:
        try:
            await _probe(teacher, endpoint, extra, _refused_field)
        except TeacherError as e:
            if e.transient:
                raise
            await _probe(teacher, endpoint, {}, refusal)  # the same without `extra`; raises when refused too
            log.info("%s refuses %s (%s)", endpoint.url, field, e)
            refusing.append((endpoint, str(e)))
        answered.add(endpoint)
    return refusing


async def _probe(teacher: Teacher, endpoint: Endpoint, extra: dict[str, Any], refuse: Refuse) -> None:
    """The one-token probe with `extra`; faults in passing are retried, the rest raise."""
    body = orjson.dumps({"model": teacher.model, "messages": [{"role": "user", "content": "Say OK."}],
                         "max_tokens": 1, **extra})

    async def once(_n: int) -> None:
        await teacher.send(endpoint, body, refuse=refuse)

    await with_retries(once, teacher.config.retry.for_probe(), what="teacher probe")


def _refused_field(server: Server, status: int, payload: bytes, retry_after: str | None) -> ServiceError | None:
    """A final refusal of a probe with an extra field, in the server's own words (the edge keeps the rest)."""
    if is_transient(status):
        return None
    return server.fail(f"http_{status}", f"HTTP {status}: {server_words(payload)}", transient=False)
