"""Dense retrieval on the command line: `hfdistill index`, `hfdistill download`, and the retriever options
`generate` and `serve-retriever` share (`--retriever`, `--index`, `--encoder`, ...)."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hfdistill.cli.parsers import common_options, flag
from hfdistill.core.encoders import DEVICES, POOLINGS, RETRIEVER_KINDS, DenseOptions, EncoderOverrides
from hfdistill.core.errors import ConfigError

__all__ = ["add_dense_commands", "add_retriever_options", "cpu_threads", "retriever_from_args"]

log = logging.getLogger("hfdistill")

# As `retrieval.download` knows them (not imported here: building the parser must stay cheap).
DATASETS = ("wiki-18",)
INDEXES = ("e5-flat", "e5-hnsw64", "bm25", "none")


def add_retriever_options(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """--retriever, --index, --encoder and the query-side encoder settings."""
    flag(g, "retriever", choices=RETRIEVER_KINDS, default=None,
         help="how --corpus is searched: bm25, dense (needs --index) or hybrid (both, fused by reciprocal rank); "
              "default dense with --index, else bm25")
    flag(g, "index", metavar="DIR|FILE",
         help="dense index: a directory made by `hfdistill index`, or a faiss file such as Search-R1's e5_Flat.index "
              "(then --encoder is required)")
    flag(g, "encoder", metavar="MODEL",
         help="the model that encoded the index (a Hub id or a local directory); read from the manifest when the "
              "index has one")
    _query_settings(g)
    flag(g, "device", choices=DEVICES, default="auto",
         help="where queries are encoded and a flat index searched (default auto: the GPU when one is visible)")
    flag(g, "batch_wait_ms", type=float, default=2.0,
         help="dense: how long a request that finds the encoder idle waits for others to batch with, while "
              "requests arrive together (default 2 ms; a lone client never waits)")
    flag(g, "max_batch", type=int, default=512, help="dense: queries encoded and searched together at most (512)")
    flag(g, "no_batching", action="store_true", help="dense: answer one request at a time (for comparison)")
    flag(g, "threads", type=int, metavar="N",
         help="dense: CPU threads for encoding and faiss (default: one per core; on a machine shared with other "
              "work, fewer threads than cores can be much faster)")


def _query_settings(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    flag(g, "query_prefix", metavar="TEXT", help="text put before each query (default by family: e5 'query: ', BGE its "
                                                 "instruction, others none)")
    flag(g, "pooling", choices=POOLINGS, help="how token vectors become one (default mean, as Search-R1)")
    flag(g, "normalize", action=argparse.BooleanOptionalAction, default=None,
         help="L2-normalise vectors (default: yes, except DPR models)")
    flag(g, "query_max_length", type=int, metavar="TOKENS", help="queries are cut at this length (default 256)")


def retriever_from_args(args: argparse.Namespace) -> tuple[str, DenseOptions | None]:
    """The retriever kind and, with --index, the dense options."""
    kind = args.retriever or ("dense" if args.index else "bm25")
    if args.index is None:
        given = [f"--{name.replace('_', '-')}" for name in ("encoder", "query_prefix", "pooling", "normalize",
                                                           "query_max_length", "threads")
                 if getattr(args, name) is not None] + (["--no-batching"] if args.no_batching else [])
        if given:
            raise ConfigError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up dense retrieval, which "
                              "needs --index (a directory made by `hfdistill index`, or a faiss file)")
        return kind, None
    overrides = EncoderOverrides(query_prefix=args.query_prefix, pooling=args.pooling, normalize=args.normalize,
                                 query_max_length=args.query_max_length)
    return kind, DenseOptions(index=args.index, encoder=args.encoder, overrides=overrides, device=args.device,
                              batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch,
                              batching=not args.no_batching)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's (and faiss's) thread count set to `n` for the command, and restored after it (process-wide
    state: the CLI's to change, never the library's)."""
    if n is None:
        yield
        return
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    faiss = _faiss_or_none()
    faiss_previous = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_previous)


def _faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:  # a GPU search needs no faiss
        return None
    return faiss


def add_dense_commands(sub: argparse._SubParsersAction) -> None:
    _add_index(sub)
    _add_download(sub)


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a JSONL corpus into a dense (faiss) index",
                       description="Encode a Search-R1 JSONL corpus with a text encoder into a faiss inner-product "
                                   "index that hfdistill and Search-R1's retrieval_server.py both load, plus a "
                                   "manifest. A killed build resumes from its last finished shard when rerun.")
    common_options(p)
    p.add_argument("--corpus", required=True, metavar="CORPUS.jsonl", help="one passage per line")
    p.add_argument("--encoder", required=True, metavar="MODEL",
                   help="a Hugging Face model id (e.g. intfloat/e5-base-v2) or a local model directory")
    p.add_argument("--out", required=True, metavar="DIR", help="the index directory")
    flag(p, "index_type", default="Flat",
         help="Flat (exact, default), HNSW<M> (e.g. HNSW64) or IVF<lists>,PQ<bytes> (e.g. IVF4096,PQ64)")
    flag(p, "device", choices=DEVICES, default="auto", help="default auto: fp16 on the GPU when one is visible, "
                                                            "else fp32 on CPU")
    flag(p, "batch_size", type=int, help="passages per forward pass (default 512 on a GPU, 32 on CPU)")
    flag(p, "shard_rows", type=int, default=8192, help="passages per resumable shard (default 8192)")
    flag(p, "threads", type=int, metavar="N", help="CPU threads for encoding (default: one per core)")
    s = p.add_argument_group("encoder conventions (default: Search-R1's for the model's family)")
    _query_settings(s)
    flag(s, "passage_prefix", metavar="TEXT", help="text put before each passage (default by family: e5 'passage: ')")
    flag(s, "passage_max_length", type=int, metavar="TOKENS", help="passages are cut at this length (default 180)")
    p.set_defaults(func=_cmd_index)


def _cmd_index(args: argparse.Namespace) -> int:
    from hfdistill.core.encoders import conventions
    from hfdistill.retrieval.extras import require_dense

    require_dense("hfdistill index")
    from hfdistill.retrieval.dense_index import BuildOptions, build_dense_index

    overrides = EncoderOverrides(query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
                                 pooling=args.pooling, normalize=args.normalize,
                                 query_max_length=args.query_max_length, passage_max_length=args.passage_max_length)
    spec = conventions(args.encoder, overrides)
    options = BuildOptions(index_type=args.index_type, device=args.device, batch_size=args.batch_size,
                           shard_rows=args.shard_rows)
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise ConfigError(f"--corpus {corpus} is not a file; pass a Search-R1 JSONL corpus")
    log.info("encoding %s with %s", corpus, spec.describe())
    with cpu_threads(args.threads):
        manifest = build_dense_index(corpus, Path(args.out), spec, options)
    print(Path(args.out) / manifest["index_file"])
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch Search-R1's wiki-18 corpus and a published index from the Hub",
                       description="Download Search-R1's published corpus (gunzipped into JSONL) and an index: its "
                                   "e5 Flat or HNSW64 faiss index (the Hub's part files joined into one and checked), "
                                   "or hfdistill's BM25 index built from the corpus. Interrupted downloads resume.")
    common_options(p)
    p.add_argument("dataset", choices=DATASETS, help="what to fetch")
    flag(p, "index", choices=INDEXES, default="e5-flat", help="which index (default e5-flat; none: the corpus only)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN, else your login; the repos are public)")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from hfdistill.retrieval.download import download

    result = download(args.dataset, args.index, Path(args.out), token=args.token)
    for line in result.usage():
        print(line)
    return 0
