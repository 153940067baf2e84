"""The command line: parse, build the config, call the library, print one-line errors.

The only module that reads argv and environment variables. Every flag and variable of the
original `generate_search_data.py` keeps its name, meaning and default; flags win over variables.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfdistill.cli.dense import add_dense_commands, add_retriever_options, cpu_threads, retriever_from_args
from hfdistill.cli.parsers import add_other_commands, common_options, flag
from hfdistill.cli.serve import add_serve_options, add_serve_teacher, serve_plan
from hfdistill.cli.tools import add_tool_options, tools_from_args
from hfdistill.core.config import OBSERVATION_FORMATS, PRIORITY_MODES, TOOL_CALL_MODES, DistillConfig, RetryPolicy
from hfdistill.core.errors import ConfigError, HfdistillError
from hfdistill.curation import options as curation
from hfdistill.run.inputs import DATA_FILES

if TYPE_CHECKING:
    from hfdistill.run.record import GenerationRecord

__all__ = ["main"]

log = logging.getLogger("hfdistill")

# The original tool's interface: (env var, flag, type, default). Dash spellings are accepted too.
SEED_OPTIONS: list[tuple[str, str, Callable[[str], Any], Any]] = [
    ("VLLM_URL", "vllm_url", str, DistillConfig.vllm_url),
    ("RETRIEVAL_URL", "retrieval_url", str, DistillConfig.retrieval_url),
    ("MAX_ASSISTANT_TURNS", "max_assistant_turns", int, DistillConfig.max_assistant_turns),
    ("MAX_SAMPLES", "max_samples", int, -1),
    ("INPUT_FILE", "input_file", str, "data/hotpotqa_hard_train/train.parquet"),
    ("OUTPUT_FILE", "output_file", str, None),  # None: <input name>_distilled.parquet here
    ("BATCH_SIZE", "batch_size", int, 16),
    ("TEMPERATURE", "temperature", float, DistillConfig.temperature),
    ("MAX_TOKENS", "max_tokens", int, DistillConfig.max_tokens),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv, args.environ = argv, os.environ
    _setup_logging(args.verbose - args.quiet)
    try:
        return int(args.func(args) or 0)
    except HfdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nerror: stopped at once; finished rollouts are recorded, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hfdistill inspect OUT | head`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again, and exit as a SIGPIPE'd tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def build_parser() -> argparse.ArgumentParser:
    from hfdistill import __version__

    parser = argparse.ArgumentParser(
        prog="hfdistill", description="Distil multi-turn search-tool conversations from a teacher served by vLLM "
                                      "into datasets that verl trains on.")
    parser.add_argument("--version", action="version", version=f"hfdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    add_serve_teacher(sub)
    add_other_commands(sub)
    add_dense_commands(sub)
    _add_curate(sub)
    return parser


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="distil conversations from a teacher into a parquet file",
                       description="Distil multi-turn search-tool conversations. Every option of the "
                                   "original script works, as a flag or as its environment variable.")
    common_options(p)
    seed = p.add_argument_group("options of the original script (flag or environment variable)")
    for env, name, _type, default in SEED_OPTIONS:
        shown = default if default is not None else "<input name>_distilled.parquet"
        flag(seed, name, default=None, metavar=env, help=f"env {env}; default {shown}")
    _teacher_options(p.add_argument_group("teacher"))
    served = p.add_argument_group("serving the teacher (hfdistill starts vLLM for the run, and stops it after)")
    flag(served, "serve", metavar="MODEL", help="start the teacher's vLLM servers (a Hugging Face model id or a local "
                                                "directory) before the first rollout, instead of VLLM_URL's")
    add_serve_options(served, port=0)
    _retrieval_options(p.add_argument_group("retrieval"))
    add_tool_options(p.add_argument_group("tools (search, open, MCP servers' tools)"))
    _data_options(p.add_argument_group("data"))
    e = p.add_argument_group("engine")
    flag(e, "engine", choices=("local", "ray"), default="local",
         help="where rollouts are made: local (this process, default) or ray (an actor pool on the Ray cluster "
              "named by RAY_ADDRESS, or a local one without it; pip install \"hfdistill[ray]\")")
    flag(e, "ray_actors", type=int, help="--engine ray: actors in the pool (default: one per CPU of the cluster, "
                                         "at most 32)")
    curation.add_judge_arguments(p, flag)
    curation.add_curation_arguments(p, flag)
    h = p.add_argument_group("publishing (checked before the run, pushed after a complete one)")
    flag(h, "push_to_hub", metavar="USER/NAME", help="push the output and its dataset card to this Hub repo")
    flag(h, "private", action="store_true", default=None, help="create the Hub repo private")
    flag(h, "license", help="license id for the card (default 'other', a placeholder to replace)")
    flag(h, "hf_token", help="Hugging Face write token (default: HF_TOKEN, else your `hf auth login`)")
    flag(p, "log_interval", type=_positive_seconds, default=30.0, metavar="SECONDS",
         help="seconds between progress lines when stderr is not a terminal (default 30; a terminal gets a "
              "live bar)")
    p.set_defaults(func=_cmd_generate)


def _teacher_options(t: argparse._ArgumentGroup) -> None:
    flag(t, "model", help="served model id (default: the one listed at /v1/models)")
    flag(t, "api_key", help="API key for the teacher (default: env OPENAI_API_KEY, else 'EMPTY')")
    flag(t, "top_p", type=float, help="nucleus sampling (Tongyi's authors use 0.95; default: server's)")
    flag(t, "presence_penalty", type=float, help="(Tongyi's authors use 1.1; default: server's)")
    flag(t, "seed", type=int, help="sampling seed sent with every request")
    flag(t, "tool_call_mode", choices=TOOL_CALL_MODES, default="auto",
         help="native: tools= and server-side parsing; text: tools in the system prompt, <tool_call> parsed "
               "here; auto (default): native unless the server refuses tools=")
    flag(t, "priority", choices=PRIORITY_MODES, default="auto",
         help="send vLLM a request priority so continuing conversations are served before new ones (vLLM "
              "--scheduling-policy priority): on, off, or auto (default: on, off for a server that refuses it)")
    flag(t, "concurrency", type=int, help="rollouts in flight (default: 512 per teacher endpoint)")
    flag(t, "max_context_tokens", type=int, metavar="N",
         help="when a conversation's next turn would need more prompt tokens than N, ask the teacher for its final "
              "answer (force_answer.j2, as Tongyi's runner does; the row ends forced_answer) (default: the server's "
              "max_model_len less --max_tokens)")
    t.add_argument("--no-force-answer", "--no_force_answer", dest="force_answer", action="store_false",
                   help="never ask for the answer at the context limit: such a conversation ends as context")
    flag(t, "request_timeout", type=float, default=1800.0, help="seconds per HTTP request (default 1800)")
    flag(t, "max_retries", type=int, default=4, help="retries of a transient HTTP failure (default 4)")
    flag(t, "retry_backoff", type=float, default=1.0,
         help="seconds before the first retry, doubling each time, with jitter (default 1)")


def _retrieval_options(r: argparse._ArgumentGroup) -> None:
    flag(r, "corpus", metavar="CORPUS.jsonl",
         help="search this Search-R1 JSONL corpus in-process (BM25, or dense with --index) instead of RETRIEVAL_URL")
    flag(r, "index_dir", help="where the corpus's BM25 index lives (default: next to the corpus)")
    add_retriever_options(r)
    flag(r, "topk", type=int, default=3, help="documents per query (default 3)")
    flag(r, "query_arg", choices=("query_list", "query"), default="query_list",
         help="argument name of the search tool's query array (default query_list, as verl)")
    flag(r, "observation_format", choices=OBSERVATION_FORMATS, default="seed",
         help="tool message format: seed ('Query: ...' + '[i] title: text') or verl ({\"result\": ...})")


def _data_options(d: argparse._ArgumentGroup) -> None:
    flag(d, "num_rollouts", type=int, default=1, help="independent rollouts per question (default 1)")
    flag(d, "question_field", help="dotted path of the question, e.g. extra_info.question (default: found)")
    flag(d, "answer_field", help="dotted path of the golden answers (default: found)")
    flag(d, "template_dir", help="directory whose templates override the built-ins by file name")
    flag(d, "keep", default="all", help=curation.KEEP_HELP)
    flag(d, "keep_malformed", action="store_true",
         help="also write rows in which the model wrote a tool call that is not even JSON (flagged "
               "malformed_call; held back by default so the student does not learn to write one)")
    flag(d, "overwrite", action="store_true", help="discard an existing output and its run, start over")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _env_or(args: argparse.Namespace, env: str, name: str, conv: Callable[[str], Any], default: Any) -> Any:
    raw = getattr(args, name)
    source = f"--{name}"
    if raw is None and os.environ.get(env, "").strip():
        raw, source = os.environ[env].strip(), env
    if raw is None:
        return default
    try:
        return conv(raw)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(conv, "valid")
        raise ConfigError(f"{source} must be {kind}, got {raw!r}") from None


def _seed_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: _env_or(args, env, name, conv, default) for env, name, conv, default in SEED_OPTIONS}
    if values["output_file"] is None:
        values["output_file"] = default_output(values["input_file"])
    return values


def _from_env(args: argparse.Namespace) -> dict[str, str]:
    """Seed options whose value came from the environment: flag name -> variable name."""
    return {name: env for env, name, *_ in SEED_OPTIONS
            if getattr(args, name) is None and os.environ.get(env, "").strip()}


@contextlib.contextmanager
def _named_as_given(from_env: dict[str, str]) -> Iterator[None]:
    """Validation messages name the flag (`--max_assistant_turns must be >= 1`); a user who set
    MAX_ASSISTANT_TURNS should read that name instead."""
    try:
        yield
    except ConfigError as e:
        message = str(e)
        for name, env in from_env.items():
            if env not in message:
                message = re.sub(rf"--(?:{name}|{name.replace('_', '-')})\b", env, message)
        if message == str(e):
            raise
        raise ConfigError(message) from None


def default_output(input_file: str) -> str:
    """`data/train.parquet` -> `train_distilled.parquet`; `org/name:split` -> `name_split_distilled.parquet`."""
    base = input_file.rstrip("/").replace(":", "_")
    name = Path(base).name
    for suffix in DATA_FILES:
        name = name.removesuffix(suffix)
    return f"{name.replace('*', '') or 'output'}_distilled.parquet"


def _config(args: argparse.Namespace, seed: dict[str, Any]) -> DistillConfig:
    if args.max_retries < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.retry_backoff < 0:
        raise ConfigError(f"--retry-backoff must be >= 0 seconds, got {args.retry_backoff}")
    if args.corpus and not Path(args.corpus).is_file():
        raise ConfigError(f"--corpus {args.corpus} is not a file; pass a Search-R1 JSONL corpus")
    retriever, dense = retriever_from_args(args)
    return DistillConfig(
        vllm_url=seed["vllm_url"], retrieval_url=seed["retrieval_url"], corpus=args.corpus,
        index_dir=args.index_dir, retriever=retriever, dense=dense, model=args.model,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        max_assistant_turns=seed["max_assistant_turns"], temperature=seed["temperature"],
        max_tokens=seed["max_tokens"], top_p=args.top_p, presence_penalty=args.presence_penalty, seed=args.seed,
        topk=args.topk, tool_call_mode=args.tool_call_mode, priority=args.priority, query_arg=args.query_arg,
        observation_format=args.observation_format, template_dir=args.template_dir,
        num_rollouts=args.num_rollouts, concurrency=args.concurrency, question_field=args.question_field,
        answer_field=args.answer_field,
        retry=RetryPolicy(attempts=args.max_retries + 1, timeout=args.request_timeout, backoff=args.retry_backoff),
        judge=curation.judge_from_args(args, os.environ), force_answer=args.force_answer,
        max_context_tokens=args.max_context_tokens, tools=tools_from_args(args),
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from hfdistill.run.inputs import check_source

    seed = _seed_values(args)
    with _named_as_given(_from_env(args)):
        config = _config(args, seed)
        check_source(seed["input_file"])  # a mistyped file name fails here, in milliseconds
        from hfdistill.cli.process import run_settings
        from hfdistill.commands.generate import GenerateOptions, generate
        from hfdistill.core.types import StopRequest

        plan = _serve_plan(args)
        options = GenerateOptions(input_file=seed["input_file"], output_file=seed["output_file"],
                                  max_samples=seed["max_samples"], batch_size=seed["batch_size"], keep=args.keep,
                                  keep_malformed=args.keep_malformed, overwrite=args.overwrite,
                                  command=_command_line(args.argv), progress=not args.quiet,
                                  log_interval=args.log_interval, engine=args.engine, ray_actors=args.ray_actors,
                                  curation=curation.curation_from_args(args), serve=plan)
    if args.push_to_hub:
        from hfdistill.publish.hub import check_push_target

        check_push_target(args.push_to_hub, license=args.license, token=args.hf_token)
    stop = StopRequest()
    # process-wide settings are the CLI's to change (and restore)
    with run_settings(stop), cpu_threads(args.threads if config.dense is not None else None):
        result = generate(config, options, stop=stop)
    if not result.skipped_as_done:
        _print_summary(result)
    if args.push_to_hub and result.complete:
        from hfdistill.publish.hub import push

        url = push(result.output, args.push_to_hub, private=args.private, token=args.hf_token, license=args.license)
        log.info("pushed %s and its card to %s", result.output, url)
    elif args.push_to_hub:
        log.warning("not pushing an incomplete run; rerun the same command to finish it (it pushes then), or "
                    "push what there is with `hfdistill push %s --repo-id %s`", result.output, args.push_to_hub)
    return result.exit_code


def _serve_plan(args: argparse.Namespace) -> Any:
    """--serve: the servers to start (every option checked now, before the input is read); None without it."""
    if args.serve is None:
        return None
    named = "--vllm_url" if args.vllm_url is not None else "VLLM_URL" if os.environ.get("VLLM_URL", "").strip() \
        else None
    if named:
        raise ConfigError(f"--serve starts the teacher's servers, and {named} names others; drop one of them")
    return serve_plan(args, os.environ, args.serve, ray=args.engine == "ray")


def _command_line(argv: Sequence[str]) -> str:
    """The command that reproduces this run, for the file's record; secrets are masked."""
    from hfdistill.publish.card import redact_command

    seed_env = [f"{env}={shlex.quote(os.environ[env])}" for env, *_ in SEED_OPTIONS if os.environ.get(env)]
    return redact_command(" ".join([*seed_env, "hfdistill", *map(shlex.quote, argv)]))


def _print_summary(result: Any) -> None:
    from hfdistill.commands.summary import summary_lines

    for line in summary_lines(result):
        print(line, file=sys.stderr)


def _print_funnel(record: GenerationRecord) -> None:
    from hfdistill.commands.summary import yield_lines

    for line in yield_lines(record):
        print(f"  {line}", file=sys.stderr)


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="re-curate an output file (judge, filter, select) without the teacher",
                       description="Judge, flag, filter and select the rows of an hfdistill output again, with the "
                                   "options of generate's curation, and write them atomically to -o.")
    common_options(p)
    curation.add_curate_arguments(p, flag)
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args: argparse.Namespace) -> int:
    from hfdistill.commands.curate import curate

    options = curation.curation_from_args(args, keep=args.keep, keep_malformed=args.keep_malformed)
    retry = RetryPolicy(attempts=args.max_retries + 1, timeout=args.request_timeout, backoff=args.retry_backoff)
    result = curate(args.path, args.output, options, judge=curation.judge_from_args(args, os.environ),
                    template_dir=args.template_dir, retry=retry, window=args.concurrency,
                    command=_command_line(args.argv))
    print(f"[hfdistill] wrote {result.rows} rows to {result.output}", file=sys.stderr)
    _print_funnel(result.record)
    return result.exit_code


class _AboveTheBar(logging.StreamHandler):
    """Log lines go above the live progress bar (tqdm clears and redraws it) instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except (OSError, ValueError):  # a closed stream: logging's own policy, as StreamHandler does
            self.handleError(record)


def _setup_logging(level: int) -> None:
    handler = _AboveTheBar(sys.stderr)
    handler.setFormatter(logging.Formatter("[hfdistill] %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO if level == 0 else logging.DEBUG if level > 0 else logging.WARNING)
