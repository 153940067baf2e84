"""`Distiller`: the rollout loop as an async batch function for `Dataset.map`.

`datasets` runs async map functions with many batches in flight and writes results in input
order; one semaphore here (the window) bounds the rollouts in flight across all of them, so there
is no barrier between batches. The distiller owns the window and the clients and calls the
rollout loop; what happens to each rollout (a row, a journal line, a failure) is its recorder's
business (see `run.recorder`). It pickles as its configuration only, so `map` fingerprints it
deterministically; clients are created lazily inside the event loop `map` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sys
import traceback
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError, HfdistillError, RolloutError
from hfdistill.core.prompts import Prompts
from hfdistill.core.records import RolloutResult
from hfdistill.core.rollout import RolloutSpec, TurnStep, rollout
from hfdistill.core.rows import build_table, output_features, output_schema
from hfdistill.core.templates import Templates
from hfdistill.core.types import RolloutJob, StopRequest
from hfdistill.curation.select import with_pass_rates
from hfdistill.engines.runtime import Clients, Runtime, batch_budget
from hfdistill.judge.client import Judge, JudgeStats
from hfdistill.judge.judging import JudgeItem, judged
from hfdistill.judge.prompt import JudgePrompt
from hfdistill.run.inputs import FieldPlan, InputRow, plan_fields, rows_of
from hfdistill.run.recorder import Collector, Recorder, usable
from hfdistill.teacher.client import TeacherStats
from hfdistill.teacher.lifecycle import ServerStates
from hfdistill.teacher.pool import Route
from hfdistill.teacher.served import Served
from hfdistill.tools.toolset import discover_servers, offered_tools, toolset_identity

__all__ = ["Binding", "Distiller"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _all_batches_scheduled() -> Iterator[None]:
    # `datasets` caps its async calls in flight (1000) by polling asyncio.wait, which spins while
    # the oldest call is still running; uncapped, it awaits calls in order. Admission (above) is
    # what bounds the work, so the cap is lifted for the duration of our own map (and restored).
    previous = datasets.config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL
    datasets.config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL = sys.maxsize
    try:
        yield
    finally:
        datasets.config.MAX_NUM_RUNNING_ASYNC_MAP_FUNCTIONS_IN_PARALLEL = previous


@dataclass(frozen=True)
class Binding:
    """How rows of one input are read and written: the fields holding question and answers, and the
    schema of the output rows (its `extra_info` typed as the input's)."""

    plan: FieldPlan
    schema: pa.Schema


class Distiller:
    """Turns batches of questions into batches of distilled conversations (one row per rollout)."""

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.servers = discover_servers(config)  # lists every MCP server's tools: one that is down fails here
        tools = offered_tools(config, self.servers)
        templates = Templates(config.template_dir, observation=config.observation_format,
                              tool_templates=tuple(t.observation_template for t in tools))
        self.prompts = Prompts.build(templates, tools)
        self._bindings: dict[tuple[str, ...], Binding] = {}  # by the input's column names
        judge = config.judge
        self.judge_prompt = JudgePrompt.build(templates, judge.model) if judge is not None else None
        offered = {getattr(t, "server", None) for t in tools}
        self.clients = Clients(config, self.prompts.tools, self.prompts.render, judged=self.judge_prompt is not None,
                               servers=[s for s in self.servers if s.label in offered],
                               search="search" in self.prompts.toolset, opens="open" in self.prompts.toolset)
        self._collector = Collector(self.tools, judge_spec=self.judge_spec)
        self._recorder: Recorder = self._collector
        self._stop = StopRequest()
        self._copy = False  # unpickled in another process (a datasets worker): its recorder is not the caller's

    # Pickled state is the configuration only: `map`'s fingerprint stays deterministic and no
    # client or loop is ever pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]
        self._copy = True

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The `tools` column of every row (see `core.prompts`: the schemas offered, or [] when parquet cannot
        hold them as they are)."""
        return self.prompts.row_tools

    def tool_identity(self) -> tuple[dict[str, Any], ...] | None:
        """The offered tools as a run's fingerprint and record name them (None: search alone)."""
        return toolset_identity(list(self.prompts.toolset.values()), self.servers)

    @property
    def judge_spec(self) -> str | None:
        """Which judge a stored verdict must come from to count (None: no judge configured)."""
        return self.judge_prompt.spec if self.judge_prompt is not None else None

    def new_judge(self) -> Judge | None:
        """A judge client for the running event loop (None without --judge-url)."""
        return self.clients.new_judge()

    # What the servers serve lives in one place, `clients.served`; these read it.
    @property
    def model(self) -> str | None:
        return self.clients.served.model

    @property
    def mode(self) -> str | None:
        return self.clients.served.protocol

    @property
    def judge_model(self) -> str | None:
        return self.clients.served.judge_model

    @property
    def context_budget(self) -> int | None:
        """Prompt tokens a turn may use before the teacher is asked for its answer (None: never asked):
        --max-context-tokens, else the teacher's context window (as the server lists it) less max_tokens."""
        c = self.config
        if not c.force_answer:
            return None
        if c.max_context_tokens is not None:
            return c.max_context_tokens
        window = self.clients.served.max_model_len
        return window - c.max_tokens if window is not None and window > c.max_tokens else None

    @property
    def teacher_stats(self) -> TeacherStats:
        return self.clients.teacher_stats

    @property
    def judge_stats(self) -> JudgeStats:
        return self.clients.judge_stats

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Rollouts of `map_batch` / `map` that failed (they are not rows), with cause and error."""
        return self._collector.failures

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Input rows that were never sent to the teacher (a blank question)."""
        return self._collector.skipped_rows

    # ------------------------------------------------------------ set-up

    def bind(self, features: Mapping[str, Any]) -> Binding:
        """Find the question/answer fields of an input with these features (a missing one fails here, before
        any server is contacted) and the schema of its output; `map_batch` uses it for batches of its columns."""
        plan = plan_fields(features, self.config.question_field, self.config.answer_field)
        features = datasets.Features(features) if not isinstance(features, datasets.Features) else features
        binding = Binding(plan, output_features(self.tools, features).arrow_schema)
        self._bindings[tuple(features)] = binding
        return binding

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """Features to pass to `Dataset.map(..., features=...)` for this input."""
        return output_features(self.tools, input_features)

    def corpus_digest(self) -> str | None:
        """The content hash of the embedded retriever's corpus (loading its index), or None without one."""
        if self.config.corpus is None:
            return None
        return self.clients.embedded().corpus_hash

    def retriever_identity(self) -> dict[str, Any] | None:
        """What names a dense or hybrid retriever in the run's fingerprint (kind, vectors, encoder); None for
        BM25 and HTTP, which the corpus hash or nothing names."""
        if self.config.corpus is None:
            return None
        return self.clients.embedded().identity()

    def prepare(self) -> None:
        """Probe the teacher (model id, protocol), the retriever and the judge now, outside any `map`."""
        self.clients.prepare()

    def gauges(self) -> dict[str, float]:
        """Live teacher numbers for the progress line: calls, completion tokens, open requests."""
        return {"calls": self.teacher_stats.calls, "tokens": self.teacher_stats.completion_tokens,
                "requests": self.clients.in_flight}

    def use_teacher(self, urls: Sequence[str] | None = None, *, states: ServerStates | None = None,
                    near: Collection[str] = ()) -> None:
        """Send the teacher's turns to these servers (hfdistill started them, `--serve`), whose `states` say
        which are up or being restarted; `near` ones first (a Ray actor's own node's). Before any rollout."""
        if self.clients.has_runtimes:
            raise RuntimeError("use_teacher() after the clients were made")
        if urls is not None:
            self.config = self.config.replace(vllm_url=",".join(urls))
            self.clients.config = self.config
        self.clients.states, self.clients.near = states, frozenset(near)

    def assume_teacher(self, served: Served) -> None:
        """Take what another process found when it probed the servers (an engine's driver), instead of
        probing them again from here."""
        self.clients.served.model, self.clients.served.protocol = served.model, served.protocol
        self.clients.served.judge_model, self.clients.served.max_model_len = served.judge_model, served.max_model_len
        self.clients.prepared = True

    async def run_jobs(self, jobs: Sequence[RolloutJob], recorder: Recorder) -> None:
        """Run these rollouts in the running loop, within the window, reporting each to `recorder`.

        An engine's worker calls this with the jobs it was sent; every call in one loop shares the
        clients and the window, as `map_batch` calls do.
        """
        self._recorder = recorder
        runtime = await self.clients.get()
        await asyncio.gather(*(self._run(runtime, job) for job in jobs))

    def stop(self) -> None:
        """Start no new rollouts; those in flight finish and are recorded."""
        self._stop.requested = True

    @property
    def stopping(self) -> bool:
        return self._stop.requested

    def map(self, ds: datasets.Dataset, *, recorder: Recorder | None = None, stop: StopRequest | None = None,
            batch_size: int = 16, **map_kwargs: Any) -> datasets.Dataset:
        """`ds.map` with everything set right: batched, indexed, typed, input columns removed.

        With a `recorder` (e.g. a journaling run), rollouts are reported to it instead of the
        returned dataset's rows and `failures`; once `stop` is requested no new rollout starts.
        """
        if (map_kwargs.get("num_proc") or 1) > 1:
            raise ConfigError("Distiller.map runs in one process (num_proc=1): its window already keeps the "
                              "teacher servers busy, and a run's journal has one writer. Raise --concurrency "
                              "instead of num_proc")
        self.bind(ds.features)
        self._recorder = recorder or self._collector
        self._stop = stop or self._stop
        try:
            # Arrow batches stay zero-copy slices of the input until admitted (see map_batch).
            with _all_batches_scheduled():
                mapped = ds.with_format("arrow").map(
                    self.map_batch, batched=True, batch_size=batch_size, with_indices=True,
                    remove_columns=ds.column_names, features=self.output_features(ds.features), **map_kwargs)
            return mapped.with_format(ds.format["type"], **ds.format["format_kwargs"])
        finally:
            self._recorder = self._collector
            loops = self.clients.loops()
            self.close()
            _close_idle(loops)

    def stream(self, rows: Iterable[InputRow], *, recorder: Recorder, stop: StopRequest | None = None,
               batch_size: int = 16) -> None:
        """Make the rollouts of `rows`, reporting each to `recorder` (a journaling run), in an event loop of its own.

        For a caller that records rollouts itself (`generate`): `rows` is read lazily, `batch_size`
        rows at a time, and only as many batches are admitted as keep the window full (`batch_budget`),
        so what is held follows the window, not the input; no barrier between batches. (`map` gives
        the batches to `datasets`, which schedules every batch of the input up front.) Once `stop` is
        requested no new rollout starts.
        """
        self._recorder = recorder
        self._stop = stop or self._stop
        try:
            asyncio.run(self._stream(iter(rows), batch_size))
        finally:
            self._recorder = self._collector

    async def _stream(self, rows: Iterator[InputRow], batch_size: int) -> None:
        admission = asyncio.Semaphore(batch_budget(self.config.window, batch_size * self.config.num_rollouts))
        running: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            admission.release()
            if not task.cancelled() and task.exception() is not None:
                errors.append(task.exception())  # type: ignore[arg-type]

        try:
            runtime = await self.clients.get()  # (the probe: a server down fails here, its clients closed below)
            while not (self.stopping or errors):
                await admission.acquire()
                batch = list(itertools.islice(rows, batch_size))
                if not batch or self.stopping or errors:
                    admission.release()
                    break
                task = asyncio.create_task(self._run_batch(runtime, batch))
                running.add(task)
                task.add_done_callback(done)
            if errors:
                for task in running:
                    task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if errors:
                raise errors[0]
        finally:
            await self.clients.aclose()

    async def _run_batch(self, runtime: Runtime, rows: Sequence[InputRow]) -> None:
        await asyncio.gather(*(self._run(runtime, job) for job in self._jobs(rows)))

    def close(self) -> None:
        """Close the clients of every loop this distiller ran in (idempotent)."""
        self.clients.close()

    # ------------------------------------------------------------ the map function

    async def map_batch(self, batch: dict[str, list[Any]] | pa.Table,
                        indices: list[int] | None = None) -> pa.Table:
        """`Dataset.map(batched=True)` function: input rows in, one output row per finished rollout.

        Takes a dict of columns (the default format) or an arrow table (`with_format("arrow")`).
        A batch waits for admission before its rows become Python objects, so however many
        batches `map` schedules, only a few windows' worth of rows are held in memory.
        """
        if self._copy and self._recorder is self._collector:
            raise ConfigError("Distiller.map_batch is running in a worker process (Dataset.map with num_proc > 1), "
                              "where its failures cannot reach you; use num_proc=1 (the distiller's window "
                              "already runs many rollouts at once)")
        runtime = await self.clients.get()
        n = batch.num_rows if isinstance(batch, pa.Table) else len(next(iter(batch.values()))) if batch else 0
        if runtime.admission is None:
            runtime.admission = asyncio.Semaphore(batch_budget(self.config.window, n * self.config.num_rollouts))
        async with runtime.admission:
            columns = batch.to_pydict() if isinstance(batch, pa.Table) else batch
            binding = self._binding_of(batch)
            rows = rows_of(columns, binding.plan, indices if indices is not None else [None] * n, extra_info=True)
            results = await asyncio.gather(*(self._run(runtime, job) for job in self._jobs(rows)))
        return build_table(with_pass_rates([r for r in results if r is not None], judged=self.judge_spec is not None),
                           binding.schema)

    def _binding_of(self, batch: dict[str, list[Any]] | pa.Table) -> Binding:
        """The binding of `map`'s input, or, for a bare `Dataset.map(map_batch)`, one made from the batch: its
        `extra_info` typed from the first batch that has a non-null one (every later batch writes that type)."""
        names = tuple(batch.column_names if isinstance(batch, pa.Table) else batch)
        found = self._bindings.get(names)
        if found is not None:
            return found
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(dict(batch))
        plan = plan_fields(datasets.Features.from_arrow_schema(table.schema), self.config.question_field,
                           self.config.answer_field)
        extra = table.schema.field("extra_info").type if "extra_info" in table.column_names else None
        binding = Binding(plan, output_schema(self.tools, extra if extra != pa.null() else None))
        if extra is None or extra != pa.null():
            self._bindings[names] = binding
        return binding

    def _jobs(self, rows: Sequence[InputRow]) -> list[RolloutJob]:
        jobs = []
        for row in rows:
            if not row.question:
                self._recorder.skipped(RolloutJob(row.index, 0, "", row.golden_answers, row.extra_info))
                continue
            jobs.extend(RolloutJob(row.index, r, row.question, row.golden_answers, row.extra_info)
                        for r in range(self.config.num_rollouts))
        return jobs

    async def _run(self, runtime: Runtime, job: RolloutJob) -> dict[str, Any] | None:
        prior = usable(self._recorder.prior(job), self.model, self.mode)
        if prior is not None and prior.result is not None:
            return self._recorder.finished(job, prior.result, model=prior.model, protocol=prior.protocol,
                                           reused=True)
        if self.stopping:
            return None
        async with runtime.window:
            if self.stopping:
                return None
            self._recorder.started(job)
            result = await self._generate(runtime, job, prior.steps if prior is not None else ())
            if result is not None and runtime.judge is not None:  # in the same slot: journaled together
                assert self.judge_prompt is not None  # (a runtime has a judge only when a prompt was built)
                item = JudgeItem(job.question, result.prediction, job.golden_answers)
                result = await judged(runtime.judge, self.judge_prompt, item, result)
        if result is None:
            return None
        return self._recorder.finished(job, result, model=self.model, protocol=self.mode, reused=False)

    async def _generate(self, runtime: Runtime, job: RolloutJob, resume: Sequence[TurnStep]) -> RolloutResult | None:
        spec = RolloutSpec(self.prompts, self.config.max_assistant_turns, runtime.teacher.mode == "text",
                           context_budget=self.context_budget)
        turns = iter(range(len(resume) + 1, spec.max_turns + 1))

        def on_turn(step: TurnStep) -> None:
            self._recorder.turn(job, next(turns), step, model=self.model, protocol=self.mode)

        try:
            traj = await rollout(job.question, job.golden_answers, spec=spec, resume=resume, on_turn=on_turn,
                                 chat=functools.partial(runtime.teacher.chat, route=Route()), tools=runtime.tools)
        except RolloutError as e:
            self._recorder.failed(job, e.cause, e.turn, str(e))
            return None
        except HfdistillError as e:
            self._recorder.failed(job, type(e).__name__, 0, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - a bug must not discard the whole map shard's work
            log.error("internal error in a rollout (please report):\n%s", traceback.format_exc())
            self._recorder.failed(job, "internal_error", 0, f"{type(e).__name__}: {e}")
            return None
        return RolloutResult.of(traj)


def _close_idle(loops: list[asyncio.AbstractEventLoop]) -> None:
    """Close the event loops `datasets` made for a map and left open (one per call; a caller's own running loop is
    left alone). Left to the garbage collector, a loop and its self-pipe sockets die in one cycle whose finalizers
    run in any order, and the loop's then fails on a socket already closed, inside whatever code the collection
    interrupted."""
    for loop in loops:
        if not loop.is_running() and not loop.is_closed():
            loop.close()
