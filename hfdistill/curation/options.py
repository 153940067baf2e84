"""The curation and judge options of `generate` and `curate`: argparse groups and their values.

The CLI owns argv and the environment; it hands the parsed arguments (and the environment, for
the judge's API key) to these functions, so both commands spell and check the options alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from hfdistill.core.config import JudgeConfig
from hfdistill.core.errors import ConfigError
from hfdistill.curation.flags import DEFAULT_MAX_STEP_WORDS
from hfdistill.curation.pipeline import CurationOptions
from hfdistill.curation.select import KEEP_VALUES, SELECT_MODES

__all__ = ["KEEP_HELP", "add_curate_arguments", "add_curation_arguments", "add_judge_arguments", "curation_from_args",
           "judge_from_args"]

Flag = Callable[..., None]  # cli._flag: adds --snake_case and --dash-case spellings
KEEP_HELP = (f"rows to write, one or more of {', '.join(KEEP_VALUES)} separated by commas (e.g. correct,clean): "
             "those ending in <answer>, the correct ones (judge, else exact match), those with no quality flag "
             "(default all)")


def add_judge_arguments(p: argparse.ArgumentParser, flag: Flag) -> None:
    g = p.add_argument_group("LLM judge (decides what is correct instead of exact match)")
    flag(g, "judge_url", metavar="URL", help="OpenAI-compatible base URL of the judge (may be the teacher's own)")
    flag(g, "judge_model", help="judge model id (default: the one the judge server lists)")
    flag(g, "judge_api_key", help="judge API key (default: env JUDGE_API_KEY, else OPENAI_API_KEY, else 'EMPTY')")


def add_curation_arguments(p: argparse.ArgumentParser, flag: Flag) -> None:
    g = p.add_argument_group("curation (applied when the file is written: other values reuse every rollout)")
    flag(g, "select", choices=SELECT_MODES, default="all",
         help="best: per question one row, the correct (with --keep clean, unflagged) rollout with the fewest "
              "searches, then fewest completion tokens (default all)")
    flag(g, "max_length", type=int, metavar="N",
         help="drop rows longer than N tokens as verl renders them (your data.max_length; needs "
              "--student-tokenizer)")
    flag(g, "student_tokenizer", metavar="DIR_OR_HUB_ID",
         help='add num_tokens under this tokenizer\'s chat template (pip install "hfdistill[tokens]")')
    flag(g, "downsample_solved", type=float, metavar="P",
         help="keep only this fraction of the questions every rollout solved (seeded, reproducible)")
    flag(g, "downsample_seed", type=int, default=0, help="seed of --downsample-solved (default 0)")
    flag(g, "max_step_words", type=int, default=DEFAULT_MAX_STEP_WORDS,
         help=f"a step thinking longer than this is flagged long_reasoning (default {DEFAULT_MAX_STEP_WORDS})")


def add_curate_arguments(p: argparse.ArgumentParser, flag: Flag) -> None:
    """Everything `hfdistill curate` takes: the files, what to keep, the judge, curation, and HTTP settings."""
    p.add_argument("path", help="an output parquet file written by hfdistill")
    p.add_argument("-o", "--output", required=True, help="the curated parquet file to write (may be the same file)")
    flag(p, "keep", default="all", help=KEEP_HELP)
    flag(p, "keep_malformed", action="store_true", help="also write rows with a tool call that is not even JSON")
    flag(p, "template_dir", help="directory whose judge_prompt.j2 overrides the built-in")
    add_judge_arguments(p, flag)
    flag(p, "concurrency", type=int, default=64, help="judge calls in flight (default 64)")
    flag(p, "request_timeout", type=float, default=600.0, help="seconds per judge request (default 600)")
    flag(p, "max_retries", type=int, default=4, help="retries of a transient judge failure (default 4)")
    flag(p, "retry_backoff", type=float, default=1.0, help="seconds before the first retry, doubling (default 1)")
    add_curation_arguments(p, flag)


def curation_from_args(args: argparse.Namespace, **keep: Any) -> CurationOptions:
    """The curation options given; `keep`/`keep_malformed` when the caller has them."""
    return CurationOptions(select=args.select, max_length=args.max_length, downsample_solved=args.downsample_solved,
                           downsample_seed=args.downsample_seed, max_step_words=args.max_step_words,
                           student_tokenizer=args.student_tokenizer, **keep)


def judge_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> JudgeConfig | None:
    if not args.judge_url:
        if args.judge_model or args.judge_api_key:
            raise ConfigError("--judge-model and --judge-api-key need --judge-url (the judge server's /v1 URL)")
        return None
    key = args.judge_api_key or environ.get("JUDGE_API_KEY") or environ.get("OPENAI_API_KEY") or "EMPTY"
    return JudgeConfig(url=args.judge_url, model=args.judge_model, api_key=key)
