"""`hfdistill download wiki-18`: Search-R1's published corpus and indexes, fetched from the Hub.

The corpus (`wiki-18.jsonl.gz`) is gunzipped into `wiki-18.jsonl`; a faiss index published as
`part_*` files is joined into one file (`e5_Flat.index`) part by part, each part deleted once appended,
so the disk holds the index plus one part, and the join resumes where it stopped. huggingface_hub
resumes a file cut off mid-transfer. The result is checked: the joined size against the Hub's part
sizes, the faiss header, a flat index's exact length, and one corpus row per vector.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from tqdm import tqdm

from hfdistill.core.atomic import atomic_path, atomic_write_text
from hfdistill.core.errors import ConfigError, HfdistillError, HubError, first_line
from hfdistill.retrieval.corpus_rows import CorpusRows
from hfdistill.retrieval.faiss_file import read_header

__all__ = ["DATASETS", "INDEXES", "Downloaded", "download"]

log = logging.getLogger(__name__)

DATASETS = ("wiki-18",)
INDEXES = ("e5-flat", "e5-hnsw64", "bm25", "none")
CORPUS_REPO, CORPUS_FILE, CORPUS_NAME = "PeterJinGo/wiki-18-corpus", "wiki-18.jsonl.gz", "wiki-18.jsonl"
INDEX_REPOS = {"e5-flat": ("PeterJinGo/wiki-18-e5-index", "e5_Flat.index"),
               "e5-hnsw64": ("PeterJinGo/wiki-18-e5-index-HNSW64", "e5_HNSW64.index")}
ENCODER = "intfloat/e5-base-v2"  # what Search-R1 encoded wiki-18 with
_COPY = 1 << 24
_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "h11", "ssl"}  # huggingface_hub's HTTP stack


@dataclass(frozen=True)
class Downloaded:
    """What is on disk after a download, and how to use it."""

    corpus: Path
    passages: int
    index: Path | None
    kind: str

    def usage(self) -> list[str]:
        lines = [f"corpus: {self.corpus} ({self.passages:,} passages)"]
        search = f"--corpus {self.corpus}"
        if self.index is not None:
            lines.append(f"index:  {self.index} ({self.index.stat().st_size / 2**30:.1f} GiB, encoded by {ENCODER})")
            search += f" --index {self.index} --encoder {ENCODER}"
        elif self.kind == "bm25":
            lines.append(f"index:  {self.corpus}.bm25s (hfdistill's BM25)")
        lines += [f"generate:        hfdistill generate {search} ...",
                  f"or serve it:     hfdistill serve-retriever {search} --port 8001"]
        return lines


def download(dataset: str, index: str, out: Path, *, token: str | None = None) -> Downloaded:
    """Fetch `dataset` and `index` into `out` (resuming); see the module docstring."""
    if dataset not in DATASETS or index not in INDEXES:
        raise ConfigError(f"unknown dataset/index {dataset}/{index}; choose {DATASETS} and one of {INDEXES}")
    out.mkdir(parents=True, exist_ok=True)
    with _hub_errors():
        corpus = _corpus(out, token)
        joined = _joined_index(out, *INDEX_REPOS[index], token) if index in INDEX_REPOS else None
    shutil.rmtree(out / ".downloads", ignore_errors=True)  # huggingface_hub's resume bookkeeping, now unneeded
    rows = CorpusRows.load(corpus, corpus.with_name(corpus.name + ".rows"))  # numbered once, for every later run
    rows.close()
    if joined is not None:
        header = read_header(joined)
        if header.is_flat_ip:
            header.check_flat()
        if header.ntotal != len(rows):
            raise HubError(f"{joined} holds {header.ntotal:,} vectors but {corpus} has {len(rows):,} passages; "
                           "delete both and download again")
    if index == "bm25":
        # Search-R1's published BM25 index is Lucene's (pyserini); hfdistill's is built from the corpus instead,
        # with the same analyzer (Lucene's English stopwords, Porter2 stems).
        from hfdistill.retrieval.bm25 import BM25Retriever

        BM25Retriever.load(corpus).close()
    return Downloaded(corpus, len(rows), joined, index)


def _corpus(out: Path, token: str | None) -> Path:
    target = out / CORPUS_NAME
    if target.is_file():  # written atomically: present means complete
        log.info("%s is already here", target)
        return target
    gz = Path(hf_hub_download(CORPUS_REPO, CORPUS_FILE, repo_type="dataset", local_dir=out / ".downloads",
                              token=token))
    with atomic_path(target) as tmp, gzip.open(gz, "rb") as src, tmp.open("wb") as dst, \
            tqdm(total=gz.stat().st_size, unit="B", unit_scale=True, desc=f"gunzip {CORPUS_FILE}") as bar:
        raw = src.fileobj  # type: ignore[attr-defined]
        last = 0
        while chunk := src.read(_COPY):
            dst.write(chunk)
            bar.update(raw.tell() - last)
            last = raw.tell()
    gz.unlink()  # the JSONL is what is used; the archive would only double the disk
    return target


def _joined_index(out: Path, repo: str, name: str, token: str | None) -> Path:
    target = out / name
    if target.is_file():
        log.info("%s is already here", target)
        return target
    parts = _parts(repo, token)
    state_file, partial = out / f".{name}.join.json", out / f".{name}.partial"
    state = _read_state(state_file, list(parts))
    with partial.open("ab") as f:
        f.truncate(state["size"])  # bytes past the last recorded append are from an append that was cut off
    for i, part in enumerate(parts):
        if i < state["joined"]:
            continue
        path = Path(hf_hub_download(repo, part, repo_type="dataset", local_dir=out / ".downloads", token=token))
        _append(path, partial, f"joining {part}")
        state = {"parts": list(parts), "joined": i + 1, "size": partial.stat().st_size}
        atomic_write_text(state_file, json.dumps(state))
        path.unlink()  # appended and recorded: the disk needs the index plus one part, not twice the index
    want = sum(parts.values())
    if partial.stat().st_size != want:
        raise HubError(f"{name}: the joined parts hold {partial.stat().st_size:,} bytes, the Hub lists {want:,}; "
                       f"delete {partial} and {state_file}, then download again")
    partial.replace(target)
    state_file.unlink()
    return target


def _parts(repo: str, token: str | None) -> dict[str, int]:
    """The `part_*` files of `repo`, in join order (`cat part_*`), with their sizes."""
    files = HfApi(token=token).list_repo_tree(repo, repo_type="dataset")
    parts = {f.path: f.size for f in files if Path(f.path).name.startswith("part_") and hasattr(f, "size")}
    if not parts:
        raise HubError(f"{repo} lists no part_* files; has the repository changed? See its page on the Hub")
    return dict(sorted(parts.items()))


def _read_state(path: Path, parts: list[str]) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"parts": parts, "joined": 0, "size": 0}
    if state.get("parts") != parts:
        log.warning("the Hub's part files changed since the last attempt; joining from the start")
        return {"parts": parts, "joined": 0, "size": 0}
    return state


def _append(source: Path, target: Path, desc: str) -> None:
    with source.open("rb") as src, target.open("ab") as dst, \
            tqdm(total=source.stat().st_size, unit="B", unit_scale=True, desc=desc) as bar:
        while chunk := src.read(_COPY):
            dst.write(chunk)
            bar.update(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())


def _chain(e: BaseException) -> Iterator[BaseException]:
    current: BaseException | None = e
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


@contextlib.contextmanager
def _hub_errors() -> Iterator[None]:
    """The Hub's and the network's failures as one line that says a rerun resumes."""
    try:
        yield
    except HfdistillError:
        raise
    except OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE is set; unset it to download") from None
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        answered = next((c for c in _chain(e) if isinstance(c, HfHubHTTPError) and c.response is not None), None)
        if answered is None:
            raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({first_line(e)}); rerun the same command "
                           "to resume") from None
        said = answered.server_message or first_line(answered)
        raise HubError(f"the Hub answered {answered.response.status_code} ({said}) for {answered.response.url}; "
                       "rerun the same command to resume") from None
    except (ConnectionError, TimeoutError) as e:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({first_line(e)}); rerun the same command "
                       "to resume") from None
    except OSError as e:
        raise HubError(f"download failed: {e.strerror or e}; free some disk space if it is full, then rerun the same "
                       "command to resume") from None
    except Exception as e:  # the HTTP client's own transport errors, known by module; anything else is a bug
        if type(e).__module__.split(".")[0] not in _TRANSPORT_MODULES:
            raise
        raise HubError(f"the connection to the Hub at {constants.ENDPOINT} failed ({first_line(e)}); rerun the same "
                       "command to resume") from None
