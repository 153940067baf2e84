"""`--engine ray`: the run's rollouts spread over an actor pool across a Ray cluster.

This process, the driver, keeps the run exactly as the local engine does: the output lock, the
input and its identity by content, the journal, the account and the output are the local code.
It probes the servers, then sends the rollouts the journal does not hold yet (with the turns an
earlier attempt left of each unfinished conversation), a part of 64 windows at a time so that the
driver holds one part's jobs whatever the input's size, through Ray Data: `map_batches` over an
async actor class (`worker.RolloutWorker`, one per actor, each with its own window and teacher
clients over every endpoint) on an `ActorPoolStrategy` pool, and `iter_batches` back here, where
each finished rollout is journaled and each failure listed. The workers send their finished tool
turns (and calls made) to a `TurnStore` actor on this node a few times a second (`engines.turns`); a
driver thread writes them to the run's checkpoints every half second, as a local run does, and a
task Ray retries continues each conversation from its last turn. Ray retries the work of an actor or a
node that dies (Ray Data restarts its actors and re-runs their tasks); a retried task's second
answer for a rollout already recorded is dropped, so the output holds every rollout exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets

from hfdistill.core.errors import ClusterError, HfdistillError, first_line
from hfdistill.core.rollout import TurnStep
from hfdistill.core.types import RolloutJob, StopRequest
from hfdistill.engines.distiller import Distiller
from hfdistill.engines.ray_serve import Serving
from hfdistill.engines.turns import Taken, TurnStore
from hfdistill.engines.worker import EVENT_COLUMN, JOB_COLUMN, Event, RolloutWorker, decode_event, encode_job
from hfdistill.run.account import Run
from hfdistill.run.inputs import FieldPlan, input_rows
from hfdistill.run.recorder import Prior, usable
from hfdistill.teacher.serve.plan import ServePlan

__all__ = ["ACTOR_CPUS", "MAX_DEFAULT_ACTORS", "pool_size", "run_on_ray"]

log = logging.getLogger(__name__)

MAX_DEFAULT_ACTORS = 32  # one actor feeds many GPUs (docs/performance.md, sizing); more only when asked for
# An actor mostly waits on the network. Reserving half a CPU leaves room on the surviving nodes to
# restart the actors of a lost one (Ray Data re-runs a dead actor's tasks on its restarted self).
ACTOR_CPUS = 0.5
_TAKE_SECONDS = 0.5  # how often the driver checkpoints the turn store's new turns (a killed driver loses those)
_LAST_TURNS_SECONDS = 30  # at the end, how long to wait for the turn store's last turns
_ACTORS_START_SECONDS = 600  # a cluster that cannot start the pool in this time fails the run, naming why
_Owed = tuple[RolloutJob, Prior | None]  # a rollout to make, with what an earlier attempt left
_PART_WINDOWS = 64  # rollouts sent to the cluster per Ray Data execution, in windows (see run_on_ray)
_Slot = tuple[int, int]


@dataclass
class _Dispatch:
    """The jobs sent to the cluster by (input index, rollout index), and the answers dropped as duplicates."""

    jobs: dict[_Slot, RolloutJob] = field(default_factory=dict)
    duplicates: int = 0


def run_on_ray(distiller: Distiller, ds: datasets.Dataset, run: Run, plan: FieldPlan, *, stop: StopRequest,
               actors: int | None, jobs_per_task: int, serve: ServePlan | None = None) -> None:
    """Make every rollout `run` still owes on the Ray cluster, recording each into `run`.

    The rollouts go to the cluster in parts of `_PART_WINDOWS` windows each, one Ray Data execution
    per part, so the driver holds one part's jobs (and their dispatch table) whatever the input's
    size. Once `stop` is requested, the driver stops taking answers and the pool is shut down:
    rollouts not back yet stay owed (the rerun makes them), as in a local run that was stopped. With
    `serve`, the teacher's servers are started on the cluster's nodes first (`engines.ray_serve`) and
    stopped after.
    """
    import ray

    if serve is None:
        distiller.prepare()  # servers down, wrong model, ...: one line, before any actor starts
        owed = _owed(distiller, ds, run, plan)
        part = _next_part(owed, distiller)
        if not part:
            return
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray)
    duplicates = 0
    try:
        with _teacher(ray, distiller, serve, run, stop) as serving:
            if serve is not None:
                distiller.prepare()
                owed = _owed(distiller, ds, run, plan)
                part = _next_part(owed, distiller)
            while part:
                dispatch, rows = _dispatch(part, run)
                del part
                _execute(ray, distiller, run, rows, dispatch, stop, actors=actors, jobs_per_task=jobs_per_task,
                         serving=serving)
                duplicates += dispatch.duplicates
                del rows, dispatch
                if stop.requested:
                    break
                part = _next_part(owed, distiller)
    finally:
        if started_here:
            ray.shutdown()
    if duplicates:
        log.info("dropped %d duplicate answers of retried Ray tasks (each rollout is recorded once)", duplicates)


@contextlib.contextmanager
def _teacher(ray: Any, distiller: Distiller, serve: ServePlan | None, run: Run,
             stop: StopRequest) -> Iterator[Serving | None]:
    """--serve: the teacher's servers on the cluster's nodes for the length of the rollouts; else nothing."""
    if serve is None:
        yield None
        return
    from hfdistill.engines.ray_serve import teacher_on_cluster

    with teacher_on_cluster(ray, serve, run.identity.run_dir.resolve(), stop) as teacher:
        distiller.use_teacher(teacher.urls, states=teacher.states)
        run.monitor.clock_from_now()
        yield teacher.serving


def _next_part(owed: Iterator[_Owed], distiller: Distiller) -> list[_Owed]:
    return list(itertools.islice(owed, _PART_WINDOWS * distiller.config.window))


def _dispatch(part: list[_Owed], run: Run) -> tuple[_Dispatch, list[dict[str, str]]]:
    """A part's jobs to send (each started in `run`), as rows of the jobs dataset."""
    dispatch = _Dispatch()
    rows = []
    for job, prior in part:
        assert job.input_index is not None
        dispatch.jobs[job.input_index, job.rollout_index] = job
        rows.append({JOB_COLUMN: encode_job(job, prior)})
        run.started(job)
    return dispatch, rows


def _owed(distiller: Distiller, ds: datasets.Dataset, run: Run,
          plan: FieldPlan) -> Iterator[_Owed]:
    """The rollouts to make, with what an earlier attempt left; journaled ones are counted as reused."""
    blank = run.items.blank_rows
    for row in input_rows(ds, plan):
        assert row.index is not None  # (input_rows numbers every row)
        if blank[row.index]:
            run.skipped(RolloutJob(row.index, 0, "", row.golden_answers))
            continue
        for r in range(run.num_rollouts):
            job = RolloutJob(row.index, r, row.question, row.golden_answers)
            prior = usable(run.prior(job), distiller.model, distiller.mode)
            if prior is not None and prior.result is not None:
                run.finished(job, prior.result, model=prior.model, protocol=prior.protocol, reused=True)
            else:
                yield job, prior


def _connect(ray: Any) -> None:
    """Join the cluster RAY_ADDRESS names (Ray reads it), or start a local one without it."""
    try:
        ray.init(logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot start or join a Ray cluster ({first_line(e)}); check "
                           "RAY_ADDRESS (e.g. 127.0.0.1:6379 for `ray start --head`) or unset it") from None


def _execute(ray: Any, distiller: Distiller, run: Run, rows: list[dict[str, str]], dispatch: _Dispatch,
             stop: StopRequest, *, actors: int | None, jobs_per_task: int, serving: Serving | None) -> None:
    from ray.data import ActorPoolStrategy

    blocks = math.ceil(len(rows) / jobs_per_task)
    pool = _pool_size(ray, actors, blocks)
    share = math.ceil(distiller.config.window / pool)  # the run's window, split over the actors
    # Tasks queued at an actor: twice its window, so it never runs dry, but never more than its part
    # of the work, so the first actor up does not take it all (and a lost node loses only its part).
    tasks = min(2 * math.ceil(share / jobs_per_task), math.ceil(blocks / pool))
    config = distiller.config.replace(concurrency=share, **_absolute_paths(distiller))
    log.info("Ray: %d actors, %d rollouts in flight each, %d rollouts per task", pool, share, jobs_per_task)
    turns = _turn_store(ray)
    collector = _Collector(ray, turns, run, distiller, dispatch)
    try:
        with _data_context(), collector:  # (a dataset keeps the context it was made in)
            jobs = ray.data.from_items(rows, override_num_blocks=blocks)
            events = jobs.map_batches(
                RolloutWorker, batch_size=jobs_per_task, num_cpus=ACTOR_CPUS,  # Ray Data spreads actors over nodes
                fn_constructor_kwargs={"config": config, "served": distiller.clients.served, "turns": turns,
                                       "serving": serving},
                compute=ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=tasks,
                                          max_concurrent_calls_per_actor=tasks))
            _consume(events, run, dispatch, stop, collector)
    except ray.exceptions.RayError as e:
        reason = first_line(e)
        log.error("the Ray cluster failed to run the rollouts (%s); those not back are listed as failures", reason)
        collector.take_last()
        for job in list(dispatch.jobs.values()):
            run.failed(job, "cluster", 0, f"the Ray cluster failed: {reason}")
        dispatch.jobs.clear()
    else:
        collector.take_last()
    finally:
        ray.kill(turns)
    if stop.requested:
        distiller.stop()  # the run reads it to tell an interrupted run from a finished one
        return  # the rollouts not back yet stay owed: the rerun makes them
    for job in list(dispatch.jobs.values()):  # sent, never answered: never silently dropped
        run.failed(job, "cluster", 0, "the Ray cluster returned no result for this rollout")


def _turn_store(ray: Any) -> Any:
    """The run's `TurnStore` actor, on this node: it lives as long as the driver, whichever node is lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(TurnStore).options(num_cpus=0, scheduling_strategy=here).remote()


def _consume(events: Any, run: Run, dispatch: _Dispatch, stop: StopRequest, collector: _Collector) -> None:
    for batch in events.iter_batches(batch_size=None, batch_format="pyarrow"):
        with collector.lock:
            for text in batch[EVENT_COLUMN].to_pylist():
                event = decode_event(text)
                _record(event, run, dispatch)
                collector.recorded.append(event.slot)
        collector.raise_error()
        if stop.requested:
            return


class _Collector:
    """Takes what the workers sent the turn store, every half second, on a thread of its own: a task
    answers only when its slowest conversation ends, so results can be far apart, and the turns must
    reach the checkpoints before then. `lock` keeps the run's records to one thread at a time."""

    def __init__(self, ray: Any, store: Any, run: Run, distiller: Distiller, dispatch: _Dispatch) -> None:
        self.ray, self.store, self.run, self.distiller, self.dispatch = ray, store, run, distiller, dispatch
        self.lock = threading.Lock()
        self.recorded: list[_Slot] = []  # rollouts recorded since the last take: the store drops them
        self.error: HfdistillError | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._every_half_second, name="hfdistill-turns", daemon=True)

    def __enter__(self) -> _Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _every_half_second(self) -> None:
        try:
            while not self._done.wait(_TAKE_SECONDS):
                self.take()
        except self.ray.exceptions.RayError as e:
            log.warning("the turns of the rollouts in flight are no longer checkpointed (%s)", first_line(e))
        except HfdistillError as e:  # a run that cannot record (a full disk): raised in the driver's thread
            self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def take(self, timeout: float | None = None) -> None:
        with self.lock:
            recorded, self.recorded = self.recorded, []
        taken = self.ray.get(self.store.take.remote(recorded), timeout=timeout)
        with self.lock:
            _collect(taken, self.run, self.distiller, self.dispatch)

    def take_last(self) -> None:
        """The store's last turns and calls, so that the rollouts that never came back resume from them."""
        self.raise_error()
        try:
            self.take(timeout=_LAST_TURNS_SECONDS)
        except self.ray.exceptions.RayError as e:
            log.warning("the last turns of the rollouts in flight were not saved (%s); they will start over, "
                        "and the summary may miss some teacher calls", first_line(e))


def _collect(taken: Taken, run: Run, distiller: Distiller, dispatch: _Dispatch) -> None:
    """What the workers sent the store since the last take: the turns of rollouts still out into the
    run's checkpoints (a driver killed now resumes those conversations from there), the calls into
    the run's counts."""
    for calls in taken.calls:
        _add_calls(distiller, calls)
    for report in taken.turns:
        job = dispatch.jobs.get(report.slot)
        if job is not None:
            run.turn(job, report.number, TurnStep.from_dict(report.step), model=report.model,
                     protocol=report.protocol)


@contextlib.contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data set for the run (and restored): every actor of the pool up before work is handed out, so
    it is shared evenly; no progress bars or INFO logs (the run's own progress line says what matters);
    no memory polling of tasks (a thread per task reading /proc every second: with the dozens of
    long tasks an actor runs at once, a tenth of its CPU)."""
    from ray.data import DataContext

    context, logger = DataContext.get_current(), logging.getLogger("ray.data")
    fields = ("enable_progress_bars", "wait_for_min_actors_s", "memory_usage_poll_interval_s")
    saved, level = {name: getattr(context, name) for name in fields}, logger.level
    context.enable_progress_bars, context.wait_for_min_actors_s = False, _ACTORS_START_SECONDS
    context.memory_usage_poll_interval_s = None
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        logger.setLevel(level)


def _record(event: Event, run: Run, dispatch: _Dispatch) -> None:
    """One worker event into the run: the first answer for a rollout counts, a retried task's repeat is dropped."""
    job = dispatch.jobs.pop(event.slot, None)
    if job is None or run.journal.has(run.slot(job)):
        dispatch.duplicates += 1
        return
    if event.kind == "finished":
        assert event.result is not None
        run.finished(job, event.result, model=event.model, protocol=event.protocol, reused=False)
        return
    for number, step in event.turns:  # so that the next run continues this conversation
        run.turn(job, number, step, model=event.model, protocol=event.protocol)
    run.failed(job, event.cause, event.turn, event.error)


def _add_calls(distiller: Distiller, calls: dict[str, Any]) -> None:
    stats = distiller.teacher_stats
    stats.calls += calls["calls"]
    stats.retries += calls["retries"]
    stats.prompt_tokens += calls["prompt_tokens"]
    stats.completion_tokens += calls["completion_tokens"]
    for endpoint, n in calls["by_endpoint"].items():
        stats.by_endpoint[endpoint] = stats.by_endpoint.get(endpoint, 0) + n
    judge, judged = distiller.judge_stats, calls["judge"]
    judge.calls += judged["calls"]
    judge.retries += judged["retries"]
    for cause, n in judged["failures"].items():
        judge.failures[cause] = judge.failures.get(cause, 0) + n


def _pool_size(ray: Any, actors: int | None, tasks: int) -> int:
    cpus = float(ray.cluster_resources().get("CPU", 1))
    size, warning = pool_size(actors, cpus, tasks)
    if warning:
        log.warning("%s", warning)
    return size


def pool_size(actors: int | None, cluster_cpus: float, tasks: int) -> tuple[int, str | None]:
    """--ray-actors, or one per CPU of the cluster (at most MAX_DEFAULT_ACTORS), never more than tasks;
    and a warning when the cluster, as it is now, cannot host that many actors."""
    if actors is None:
        actors = max(1, min(MAX_DEFAULT_ACTORS, int(cluster_cpus)))
    size = max(1, min(actors, tasks))
    if size * ACTOR_CPUS <= cluster_cpus:
        return size, None
    return size, (f"{size} Ray actors need {size * ACTOR_CPUS:g} CPUs and the cluster has {cluster_cpus:g}: the "
                  f"run waits up to {_ACTORS_START_SECONDS // 60} minutes for more nodes (an autoscaler), then "
                  f"fails; lower --ray-actors to {max(1, int(cluster_cpus / ACTOR_CPUS))} or add nodes")


def _absolute_paths(distiller: Distiller) -> dict[str, Any]:
    """Paths the workers open, made absolute: a worker's working directory is not the driver's. They must
    name the same files on every node (shared storage), as docs/ray.md says."""
    c = distiller.config
    paths = {"corpus": c.corpus, "index_dir": c.index_dir, "template_dir": c.template_dir}
    absolute: dict[str, Any] = {name: os.path.abspath(path) for name, path in paths.items() if path is not None}
    if c.dense is not None:
        encoder = c.dense.encoder
        if encoder is not None and os.path.isdir(encoder):  # a local model directory, not a Hub id
            encoder = os.path.abspath(encoder)
        absolute["dense"] = dataclasses.replace(c.dense, index=os.path.abspath(c.dense.index), encoder=encoder)
    return absolute
