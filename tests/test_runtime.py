"""Clients per event loop: made inside the loop that uses them, the servers probed once, what they
serve kept in one shared value, every client closed."""

from __future__ import annotations

import asyncio

from hfdistill.core.config import DistillConfig
from hfdistill.engines.runtime import Clients, batch_budget
from hfdistill.teacher.served import Served
from tests.fakes import MODEL, FakeRetriever, FakeTeacher
from tests.fakes import Served as Server


def _clients(teacher: Server, retriever: Server, **kw: object) -> Clients:
    config = DistillConfig(vllm_url=f"{teacher.url}/v1", retrieval_url=f"{retriever.url}/retrieve", **kw)
    return Clients(config, [], render=str, judged=False)


def test_the_first_loop_probes_and_every_loop_shares_what_the_servers_serve(
        teacher: tuple[FakeTeacher, Server], retriever: tuple[FakeRetriever, Server]) -> None:
    fake, server = teacher
    clients = _clients(server, retriever[1])
    assert clients.served == Served(None, None, None)  # --model and the protocol are left to the probe

    async def in_a_loop() -> tuple[object, object]:
        runtime = await clients.get()
        return runtime, await clients.get()

    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]  # as two `Dataset.map` calls run
    first, again = loops[0].run_until_complete(in_a_loop())
    assert first is again  # one runtime per loop
    assert clients.served == Served(MODEL, "native", None)
    assert first.teacher.served is clients.served  # not a copy: nothing to keep in step
    second, _ = loops[1].run_until_complete(in_a_loop())  # another loop: new clients, no new probe
    assert second is not first and second.teacher.model == MODEL
    assert fake.models_calls == 1
    clients.close()  # in each client's own loop
    assert all(r.teacher.closed for r in (first, second))
    for loop in loops:
        loop.close()


def test_the_served_value_handed_to_a_worker_is_used_without_probing(
        teacher: tuple[FakeTeacher, Server], retriever: tuple[FakeRetriever, Server]) -> None:
    fake, server = teacher
    clients = _clients(server, retriever[1], tool_call_mode="text")
    assert clients.served.protocol == "text"  # asked for, so known before any probe
    clients.served.model, clients.prepared = "driver-found-model", True

    async def teacher_model() -> str | None:
        return (await clients.get()).teacher.model

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(teacher_model()) == "driver-found-model"
    assert fake.models_calls == 0
    clients.close()
    loop.close()


def test_the_batch_budget_fills_the_window_four_times_and_never_below_eight() -> None:
    assert batch_budget(512, 16) == 128
    assert batch_budget(512, 1000) == 8
    assert batch_budget(10, 3) == 16
