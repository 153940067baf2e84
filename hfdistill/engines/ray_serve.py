"""`--engine ray --serve MODEL`: the teacher's servers on the cluster's own nodes, started and watched there.

Each GPU node gets its replicas (its GPUs split into groups of --serve-tensor-parallel): a placement group on
that node holds them (one bundle per replica), and a host actor in each bundle runs one server with the GPUs
Ray gave it, as `generate --serve` runs them locally (`teacher.serve.fleet`: its supervisor, its restarts).
A cluster without GPUs gets one CPU server per node. The hosts tell a board actor (on the driver's node) when a
server dies, comes back or is given up; the rollout actors read it every second and prefer their own node's
servers; the driver reads it too, and stops the run when a server is given up. A node lost with its servers
is handled as a lost node is: the rollouts go on elsewhere (its servers are marked gone), and only when no
server is left does the run stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfdistill.core.errors import ClusterError, Interrupted, ServeError, ServerLostError, first_line
from hfdistill.core.types import StopRequest
from hfdistill.teacher.lifecycle import GONE, ServerStates
from hfdistill.teacher.serve.fleet import Fleet
from hfdistill.teacher.serve.plan import ServePlan

__all__ = ["ClusterTeacher", "NodeReplicas", "ServerBoard", "ServerHost", "Serving", "node_id", "plan_nodes",
           "teacher_on_cluster"]

log = logging.getLogger(__name__)

NODE_LABEL = "ray.io/node-id"  # every node's label in Ray >= 2.49 (ray.util.placement_group.NODE_ID_LABEL_KEY)
_CPU_BUNDLE = 0.01  # a CPU server's bundle: a bundle must hold something, and the rollout actors need the CPUs
_WATCH_SECONDS = 1.0
_PLACE_SECONDS = 600  # a placement group not placed by then: the node cannot host its replicas


@dataclass(frozen=True)
class NodeReplicas:
    """The servers one node runs: how many, and the GPUs each holds (0: a CPU server)."""

    node_id: str
    address: str  # the node's IP: its servers' URLs
    replicas: int
    gpus: int


def plan_nodes(nodes: list[dict[str, Any]], tensor_parallel: int) -> list[NodeReplicas]:
    """From `ray.nodes()`: every GPU node's replicas of `tensor_parallel` GPUs; without any GPU node, one CPU
    server per node (a cluster with GPUs serves on GPUs only)."""
    alive = [n for n in nodes if n.get("Alive")]
    gpus = {n["NodeID"]: int(n.get("Resources", {}).get("GPU", 0)) for n in alive}
    if any(gpus.values()):
        planned = [NodeReplicas(n["NodeID"], n["NodeManagerAddress"], gpus[n["NodeID"]] // tensor_parallel,
                                tensor_parallel) for n in alive if gpus[n["NodeID"]] >= tensor_parallel]
        if not planned:
            raise ServeError(f"no node of the Ray cluster has {tensor_parallel} GPUs for one replica "
                             f"(--serve-tensor-parallel {tensor_parallel})")
        return planned
    if tensor_parallel > 1:
        raise ServeError(f"--serve-tensor-parallel {tensor_parallel} needs GPUs, and no node of the Ray cluster has "
                         "one")
    return [NodeReplicas(n["NodeID"], n["NodeManagerAddress"], 1, 0) for n in alive]


def node_id() -> str:
    """The Ray node this process runs on (a rollout actor asks, to prefer its own node's servers)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


@dataclass(frozen=True)
class Serving:
    """What a rollout actor needs of the cluster's servers: the board to read and which URLs are whose."""

    board: Any  # the ServerBoard actor's handle
    by_node: dict[str, tuple[str, ...]]
    node_of: Callable[[], str] = node_id

    def near(self) -> tuple[str, ...]:
        return self.by_node.get(self.node_of(), ())


class ServerBoard:
    """A Ray actor: the state of every server of the run (written by the hosts and the driver, read by all)."""

    def __init__(self) -> None:
        self.states = ServerStates()

    def set(self, url: str, state: str, reason: str) -> None:
        self.states.set(url, state, reason)

    def entries(self) -> dict[str, tuple[str, str]]:
        return dict(self.states.entries)


class _Posted(ServerStates):
    """A host's states, each change also posted to the board (without waiting for it)."""

    def __init__(self, board: Any) -> None:
        super().__init__()
        self.board = board

    def set(self, url: str, state: str, reason: str = "") -> None:
        super().set(url, state, reason)
        self.board.set.remote(url, state, reason)


class ServerHost:
    """A Ray actor in one bundle of its node's placement group: one server on the GPUs Ray gave it."""

    def __init__(self, plan: ServePlan, name: str, board: Any, log_dir: str, address: str) -> None:
        # On the node's address as the cluster knows it (reachable from the other nodes), a free port; the GPUs
        # are the bundle's (Ray set CUDA_VISIBLE_DEVICES for this actor, and the server inherits it).
        plan = dataclasses.replace(plan, host=address, replicas=((),), port=0)
        self.fleet = Fleet(plan, Path(log_dir), states=_Posted(board), progress=False, names=[name])

    def start(self) -> str:
        [url] = self.fleet.start()
        return url

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        self.fleet.stop()


@dataclass
class ClusterTeacher:
    """The servers started on the cluster: their URLs, by node, and what the rollout actors are given."""

    urls: tuple[str, ...]
    serving: Serving
    states: ServerStates


@contextlib.contextmanager
def teacher_on_cluster(ray: Any, plan: ServePlan, log_dir: Path, stop: StopRequest) -> Iterator[ClusterTeacher]:
    """Start every node's servers (ServeError when one does not start), watch them for the length of the run,
    and stop them after it; `stop` is requested with the reason when a server is given up, or none is left."""
    from ray.util.placement_group import placement_group, remove_placement_group

    nodes = plan_nodes(ray.nodes(), plan.tensor_parallel)
    here = _on_this_node(ray)
    board = ray.remote(ServerBoard).options(num_cpus=0, scheduling_strategy=here).remote()
    groups, hosts = [], []
    try:
        for n, node in enumerate(nodes):
            bundle = {"GPU": node.gpus} if node.gpus else {"CPU": _CPU_BUNDLE}
            group = placement_group([bundle] * node.replicas, strategy="STRICT_PACK",
                                    bundle_label_selector=[{NODE_LABEL: node.node_id}] * node.replicas)
            groups.append(group)
            _placed(ray, group, node)
            hosts += [(node, _host(ray, plan, group, i, f"vllm-{n}-{i}", board, log_dir, node.address))
                      for i in range(node.replicas)]
        log.info("starting vLLM on %d node(s) of the Ray cluster: %d server(s)", len(nodes), len(hosts))
        urls = _started(ray, hosts, stop)
        by_node: dict[str, tuple[str, ...]] = {}
        for (node, _), url in zip(hosts, urls, strict=True):
            by_node[node.node_id] = (*by_node.get(node.node_id, ()), url)
        states = ServerStates()
        states.update(ray.get(board.entries.remote()))
        log.info("vLLM ready on the cluster: %s; logs in %s on each node", ", ".join(urls), log_dir)
        with _Watch(ray, board, dict(zip(urls, (h for _, h in hosts), strict=True)), states, stop):
            yield ClusterTeacher(tuple(urls), Serving(board, by_node), states)
    finally:
        _stop_hosts(ray, [h for _, h in hosts])
        for group in groups:
            with contextlib.suppress(ray.exceptions.RayError):  # the cluster may be going down with the run
                remove_placement_group(group)
        ray.kill(board)


def _on_this_node(ray: Any) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _placed(ray: Any, group: Any, node: NodeReplicas) -> None:
    try:
        ray.get(group.ready(), timeout=_PLACE_SECONDS)
    except ray.exceptions.GetTimeoutError:
        raise ServeError(f"the Ray cluster could not hold {node.replicas} replica(s) of {node.gpus or 'no'} GPU(s) "
                         f"on node {node.address} within {_PLACE_SECONDS}s (are its GPUs taken?)") from None


def _host(ray: Any, plan: ServePlan, group: Any, index: int, name: str, board: Any, log_dir: Path,
          address: str) -> Any:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    in_bundle = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
    gpus = plan.tensor_parallel if group.bundle_specs[index].get("GPU") else 0
    cpus = 0 if gpus else _CPU_BUNDLE
    return ray.remote(ServerHost).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=in_bundle,
                                          max_concurrency=4).remote(plan, name, board, str(log_dir), address)


def _started(ray: Any, hosts: list[tuple[NodeReplicas, Any]], stop: StopRequest) -> list[str]:
    """Every host's server started, all at once; the first failure is the run's (one line, exit 2); a Ctrl-C ends
    the wait."""
    refs = [host.start.remote() for _, host in hosts]
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            for ref in done:
                ray.get(ref)  # a failed start raises now, not after the slowest has loaded
            if stop.requested and pending:
                raise Interrupted("interrupted while the teacher's servers were starting; nothing was generated; "
                                  "rerun the same command to start again")
        return [str(url) for url in ray.get(refs)]
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)  # what the host raised
        if isinstance(cause, ServeError):
            raise ServeError(str(cause)) from None
        raise ServeError(f"a vLLM host failed on the Ray cluster: {first_line(e)}") from None
    except ray.exceptions.RayError as e:
        raise ClusterError(f"the Ray cluster could not run a vLLM host ({first_line(e)})") from None


def _stop_hosts(ray: Any, hosts: list[Any]) -> None:
    refs = [host.stop.remote() for host in hosts]
    with contextlib.suppress(ray.exceptions.RayError):  # a lost node's host cannot answer (its supervisor stopped it)
        ray.get(refs, timeout=120)
    for host in hosts:
        ray.kill(host)


class _Watch:
    """The driver's look at the servers every second: the board's states (a server given up stops the run), and
    the hosts (one that died lost its node: its servers are gone; the run goes on while another is up)."""

    def __init__(self, ray: Any, board: Any, hosts: dict[str, Any], states: ServerStates, stop: StopRequest) -> None:
        self.ray, self.board, self.hosts, self.states, self.stop = ray, board, hosts, states, stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hfdistill-servers", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(_WATCH_SECONDS):
            try:
                self._look()
            except self.ray.exceptions.RayError as e:
                log.warning("cannot read the teacher servers' states (%s)", first_line(e))

    def _look(self) -> None:
        pings = {host.alive.remote(): url for url, host in self.hosts.items()}
        answered, _ = self.ray.wait(list(pings), num_returns=len(pings), timeout=10)  # a busy one: next time
        for ref in answered:
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                url = pings[ref]
                del self.hosts[url]
                self.board.set.remote(url, GONE, f"its Ray node was lost: {url}")
                log.warning("teacher server %s was lost with its Ray node; its rollouts go on on the other servers",
                            url)
        self.states.update(self.ray.get(self.board.entries.remote(), timeout=30))
        entries = self.states.entries
        given_up = [reason for state, reason in entries.values() if state == GONE and "Ray node" not in reason]
        if given_up:
            self.stop.because(ServerLostError(given_up[0]))
        elif entries and all(state == GONE for state, _ in entries.values()):
            self.stop.because(ServerLostError("every teacher server was lost with its Ray node; the run stopped"))
