"""Serving the teacher: the `--serve` options of `generate`, the `serve-teacher` command, and the `ServePlan` both
build from them (model, vLLM's interpreter, flags, GPUs). Everything is checked here, in seconds, before a
server starts: vLLM installed, the model's configuration readable, the GPUs splitting into replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfdistill.cli.parsers import common_options, flag
from hfdistill.core.errors import ConfigError, ServerLostError

if TYPE_CHECKING:
    from hfdistill.teacher.serve.plan import ServePlan

__all__ = ["add_serve_options", "add_serve_teacher", "serve_plan"]

log = logging.getLogger("hfdistill")

_WILDCARD = ("0.0.0.0", "::")


def add_serve_options(g: argparse._ArgumentGroup, *, port: int) -> None:
    """The options of the servers hfdistill starts (`generate --serve MODEL`, `serve-teacher MODEL`)."""
    flag(g, "serve_args", metavar="ARGS", default="",
         help="more vLLM flags, as one string (e.g. \"--max-num-seqs 256 --gpu-memory-utilization 0.9\"); one that "
              "hfdistill also sets replaces it, with its value")
    flag(g, "serve_max_model_len", type=int, metavar="N",
         help="the servers' context length (default: the model's max_position_embeddings)")
    flag(g, "serve_gpus", metavar="IDS", help="the GPUs to serve on, e.g. 0,1,2,3 (default: every visible GPU; none "
                                              "visible: one CPU server)")
    flag(g, "serve_tensor_parallel", type=int, default=1, metavar="N",
         help="GPUs per server: the GPUs split into replicas of N, one server each (default 1)")
    flag(g, "serve_host", default="127.0.0.1", metavar="HOST", help="address the servers listen on (default 127.0.0.1)")
    shown = f"default {port}" if port else "default 0: free ports"
    flag(g, "serve_port", type=int, default=port, metavar="PORT",
         help=f"the first server's port, the others counting up ({shown})")
    flag(g, "serve_max_restarts", type=int, default=3, metavar="N",
         help="restarts of a server that dies, per server; one more death stops the run (default 3)")
    flag(g, "serve_start_timeout", type=float, default=1800.0, metavar="SECONDS",
         help="how long a server may take to start, download and load included (default 1800)")
    flag(g, "vllm_python", metavar="PATH",
         help="the python of the environment with vLLM (default: this one; pip install \"hfdistill[vllm]\")")


def serve_plan(args: argparse.Namespace, environ: Mapping[str, str], model: str, *, ray: bool = False) -> ServePlan:
    """The servers to start for MODEL, every option checked (vLLM found, config.json read, GPUs split)."""
    from hfdistill.teacher.serve.flags import server_flags
    from hfdistill.teacher.serve.gpus import parse_gpu_list, split_replicas, visible_gpus
    from hfdistill.teacher.serve.model import read_model_config
    from hfdistill.teacher.serve.plan import ServePlan, check_vllm

    tp = args.serve_tensor_parallel
    if tp < 1:
        raise ConfigError(f"--serve-tensor-parallel must be >= 1, got {tp}")
    if args.serve_max_model_len is not None and args.serve_max_model_len < 1:
        raise ConfigError(f"--serve-max-model-len must be >= 1, got {args.serve_max_model_len}")
    if ray and args.serve_gpus:
        raise ConfigError("--serve-gpus applies to one machine; with --engine ray every GPU of each node is served")
    python = args.vllm_python or sys.executable
    module = check_vllm(python)
    config = read_model_config(model)
    flags = server_flags(config.model, config.model_type, tensor_parallel=tp, serve_args=args.serve_args,
                         max_model_len=args.serve_max_model_len or config.max_position_embeddings)
    if ray:
        replicas: list[tuple[str, ...]] = [()]  # each node's, from Ray (engines.ray_serve)
    else:
        gpus = parse_gpu_list(args.serve_gpus) if args.serve_gpus else visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"))
        replicas = split_replicas(gpus, tp)
    return ServePlan(model=config.model, python=python, flags=tuple(flags), module=module, replicas=tuple(replicas),
                     host=args.serve_host, port=args.serve_port, max_restarts=args.serve_max_restarts,
                     start_timeout=args.serve_start_timeout, tensor_parallel=tp)


def add_serve_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-teacher", help="start the teacher's vLLM servers for several runs to share",
                       description="Start the teacher's vLLM servers as `generate --serve` does (the same flags per "
                                   "model family, one server per GPU replica, each restarted when it dies), print the "
                                   "VLLM_URL that names them, and serve until Ctrl-C or SIGTERM, which stop them.")
    common_options(p)
    p.add_argument("model", metavar="MODEL", help="a Hugging Face model id or a local model directory")
    add_serve_options(p.add_argument_group("the servers"), port=8000)
    flag(p, "log_dir", default="hfdistill-teacher-logs", metavar="DIR",
         help="where each server's log is written (default ./hfdistill-teacher-logs)")
    p.set_defaults(func=_cmd_serve_teacher)


def _cmd_serve_teacher(args: argparse.Namespace) -> int:
    from hfdistill.teacher.serve.fleet import Fleet

    plan = serve_plan(args, args.environ, args.model)
    lost: list[ServerLostError] = []
    done = threading.Event()

    def on_lost(e: ServerLostError) -> None:
        lost.append(e)
        done.set()

    try:
        with _sigterm_as_interrupt(), Fleet(plan, Path(args.log_dir), progress=not args.quiet,
                                           on_lost=on_lost) as fleet:
            urls = [_public(url, plan.host) for url in fleet.start()]
            print(f"VLLM_URL={','.join(urls)}", flush=True)
            log.info("serving %s; point runs at it with the VLLM_URL above. Ctrl-C stops the servers", plan.model)
            while not done.wait(0.5):
                pass
    except KeyboardInterrupt:
        print("[hfdistill] stopped the teacher servers", file=sys.stderr)
        return 0
    if lost:
        raise lost[0]
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the command as Ctrl-C does: the servers are stopped on the way out (and the handler restored)."""
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _public(url: str, host: str) -> str:
    """A server listening on every address is named by this machine's name, for runs on other machines."""
    return url.replace("127.0.0.1", socket.getfqdn(), 1) if host in _WILDCARD else url
