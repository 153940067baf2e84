"""The commands around `generate`: serve-retriever, inspect, report, card, push (their parsers and
what each runs), and the argument helpers every command shares. `cli` assembles the parser; nothing
here reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_other_commands", "common_options", "flag"]

log = logging.getLogger("hfdistill")


def add_other_commands(sub: argparse._SubParsersAction) -> None:
    """Every command but `generate`, in the order `--help` lists them."""
    for add in (_add_serve_retriever, _add_inspect, _add_report, _add_card, _add_push):
        add(sub)


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="less log output (and no progress line)")


def flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
    """Accept both `--snake_case` and `--dash-case` spellings."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
    p.add_argument(*spellings, dest=name, **kwargs)


def _add_serve_retriever(sub: argparse._SubParsersAction) -> None:
    from hfdistill.cli.dense import add_retriever_options

    p = sub.add_parser("serve-retriever", help="serve a JSONL corpus over the Search-R1 retrieval API (BM25, dense)",
                       description="A Search-R1-compatible retrieval server (POST /retrieve, GET /health) over a "
                                   "JSONL corpus: BM25 (an index built once and reused while the corpus is unchanged), "
                                   "dense (--index: hfdistill's or Search-R1's faiss index; concurrent requests are "
                                   "encoded and searched together) or hybrid.")
    common_options(p)
    p.add_argument("--corpus", required=True, metavar="CORPUS.jsonl",
                   help='one passage per line: {"id", "contents"} (title on the first line) or {"id", "title", "text"}')
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    flag(p, "index_dir", help="where the index is stored (default: CORPUS.jsonl.bm25s/ next to the corpus)")
    p.add_argument("--topk", type=int, default=3, help="documents per query when a request gives none (default 3)")
    add_retriever_options(p.add_argument_group("dense retrieval"))
    p.set_defaults(func=_cmd_serve_retriever)


def _cmd_serve_retriever(args: argparse.Namespace) -> int:
    from hfdistill.cli.dense import cpu_threads, retriever_from_args
    from hfdistill.retrieval.server import serve

    retriever, dense = retriever_from_args(args)
    with cpu_threads(args.threads if dense is not None else None):
        serve(args.corpus, host=args.host, port=args.port, index_dir=args.index_dir, topk=args.topk,
              retriever=retriever, dense=dense)
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print conversations of an output file readably")
    common_options(p)
    p.add_argument("path", help="an output parquet file")
    p.add_argument("--row", type=int, default=0, help="first row to show (default 0)")
    p.add_argument("-n", type=int, default=1, help="how many rows (default 1)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from hfdistill.publish.render import load_rows, render_conversation

    for row in load_rows(args.path, args.row, args.n):
        print(render_conversation(row))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write one HTML page with charts and a browsable list of conversations",
                       description="Write a self-contained HTML report of an output file: the funnel, stop "
                                   "reasons, turns, searches, accuracy by searches and tokens as charts over every "
                                   "row, and a filterable list of conversations (a seeded sample of --max-rows "
                                   "rows). Open it in any browser; it makes no network request.")
    common_options(p)
    p.add_argument("path", help="an output parquet file")
    p.add_argument("-o", "--output", help="HTML file to write (default: next to the input, its name ending in "
                                          ".report.html)")
    # The default is report.DEFAULT_MAX_ROWS, not imported here: pyarrow would slow every command.
    p.add_argument("--max-rows", type=int, default=None,
                   help="conversations embedded in the page, a random sample (default 2000); the charts always "
                        "count every row")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from hfdistill.publish.report import DEFAULT_MAX_ROWS, write_report

    output = args.output or str(Path(args.path).with_suffix(".report.html"))
    max_rows = DEFAULT_MAX_ROWS if args.max_rows is None else args.max_rows
    report = write_report(args.path, output, max_rows=max_rows, seed=args.seed)
    sample = f"all {report.rows:,}" if report.sampled == report.rows else f"a sample of {report.sampled:,}"
    log.info("wrote %s (%.1f MB): charts over %s rows, %s conversations in the list", report.path,
             report.size / 1e6, f"{report.rows:,}", sample)
    return 0


def _card_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--license", help="license id for the card's metadata (default: keep the card's, else "
                                     "'other', a placeholder to replace)")
    p.add_argument("--overwrite-card", action="store_true",
                   help="replace an existing card's hand-written text with the generated one (metadata is merged)")


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write the dataset card of an output file",
                       description="Write the dataset card (Hub metadata, statistics, a sample, how to load and "
                                   "train) of an output file. An existing card file is merged, as push does.")
    common_options(p)
    p.add_argument("path", help="an output parquet file")
    p.add_argument("-o", "--output", help="card file to write (default: print to stdout)")
    p.add_argument("--repo-id", help="USER/NAME the data will live at, for the loading snippets")
    _card_options(p)
    p.set_defaults(func=_cmd_card)


def _cmd_card(args: argparse.Namespace) -> int:
    from hfdistill.publish.card import build_card, load_card_inputs
    from hfdistill.publish.merge import write_card

    if args.output:
        merged = write_card(args.path, args.output, repo_id=args.repo_id, license=args.license,
                            overwrite=args.overwrite_card)
        log.info("wrote %s (%s)", args.output, {"kept": "hand-written text kept, metadata merged",
                                                "section": "generated section refreshed"}.get(merged.body, "new card"))
        return 0
    record, sample = load_card_inputs(args.path)
    sys.stdout.write(build_card(record, sample, repo_id=args.repo_id, license=args.license))
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="push an output file and its dataset card to the Hugging Face Hub",
                       description="Push an output file to a Hub dataset repo (Dataset.push_to_hub), then merge the "
                                   "generated card into the repo's README. The token comes from --token, HF_TOKEN "
                                   "or `hf auth login`.")
    common_options(p)
    p.add_argument("path", help="an output parquet file")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME of the dataset repo (created if missing)")
    p.add_argument("--private", action="store_true", default=None,
                   help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--token", help="Hugging Face token with write access (default: HF_TOKEN, else your login)")
    _card_options(p)
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from hfdistill.publish.hub import push

    url = push(args.path, args.repo_id, private=args.private, token=args.token, license=args.license,
               overwrite_card=args.overwrite_card)
    print(url)
    return 0
