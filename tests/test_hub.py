"""`hfdistill push` against an in-memory Hub on loopback (tests/fake_hub.py), never the real one.

huggingface_hub and datasets read `HF_ENDPOINT` when imported, so every push runs as a real
`python -m hfdistill push` in a child process whose environment points at the fake Hub.
"""

from __future__ import annotations

import fnmatch
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from hfdistill.publish.card import BEGIN_MARKER, END_MARKER
from tests.fake_hub import USER, FakeHub, metadata_errors
from tests.fakes import FakeRetriever, FakeTeacher, Served
from tests.test_card import distill

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_ID = f"{USER}/search-sft"
TOKEN = "hf_fake_token"

HAND_WRITTEN = """---
pretty_name: Search traces
license: apache-2.0
tags:
- agents
---

# Search traces

Notes written by hand that no push may lose.
"""


@pytest.fixture
def hub() -> Iterator[tuple[FakeHub, Served]]:
    fake = FakeHub(token=TOKEN)
    served = Served(fake.app())
    yield fake, served
    served.close()


@pytest.fixture
def output(tmp_path: Path, teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
           real_layout: Path) -> Path:
    return distill(tmp_path, teacher, retriever, real_layout)


def _env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_DATASETS_CACHE=str(tmp_path / "ds-cache"),
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _push(env: dict[str, str], path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hfdistill", "push", str(path), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240, check=False)


def _meta(text: str) -> dict[str, Any]:
    return DatasetCard(text).data.to_dict()


def _body(text: str) -> str:
    return DatasetCard(text).text


def test_push_puts_the_data_where_configs_says_and_keeps_push_to_hub_metadata(
        hub: tuple[FakeHub, Served], output: Path, tmp_path: Path) -> None:
    fake, served = hub
    done = _push(_env(tmp_path, served.url), output, "--repo-id", REPO_ID, "--private")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{served.url}/datasets/{REPO_ID}"
    assert fake.unknown == []
    repo = fake.repos[REPO_ID]
    assert repo.private

    # the data files are where the card's configs point, and hold the rows of the output file
    readme = fake.readme(REPO_ID)
    meta = _meta(readme)
    patterns = [f["path"] for f in meta["configs"][0]["data_files"] if f["split"] == "train"]
    data_files = [p for p in fake.files(REPO_ID) if p.endswith(".parquet")]
    assert data_files == ["data/train-00000-of-00001.parquet"]
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in data_files)
    pushed = pq.read_table(io.BytesIO(fake.files(REPO_ID)[data_files[0]])).to_pylist()
    local = pq.read_table(output).to_pylist()
    assert [r["messages"] for r in pushed] == [r["messages"] for r in local]
    loaded = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.load_dataset("
                             f"{REPO_ID!r}, split='train').num_rows)"], env=_env(tmp_path, served.url),
                            capture_output=True, text=True, timeout=240, check=False)
    assert loaded.stdout.strip() == "3", loaded.stderr  # datasets finds the files through the merged card

    # push_to_hub's README (one commit earlier) lost nothing, and our keys came on top
    by_push_to_hub = _meta(repo.commits[-2].files["README.md"].decode())
    assert set(by_push_to_hub) == {"dataset_info", "configs"}
    assert meta["dataset_info"] == by_push_to_hub["dataset_info"]
    assert meta["configs"] == by_push_to_hub["configs"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 3
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
    assert "hfdistill" in meta["tags"] and meta["task_categories"] == ["text-generation"]
    assert [c.message for c in repo.commits[1:]] == ["Upload 3 rows distilled with hfdistill",
                                                      "Update the dataset card (hfdistill)"]
    # the Hub's own metadata check ran on both READMEs
    assert len(fake.validated) == 2 and all(metadata_errors(v) == [] for v in fake.validated)
    body = _body(readme)
    assert BEGIN_MARKER in body and "## Statistics" in body and f'load_dataset("{REPO_ID}"' in body


def test_a_hand_written_card_survives_and_overwrite_card_replaces_it(
        hub: tuple[FakeHub, Served], output: Path, tmp_path: Path) -> None:
    fake, served = hub
    fake.add_repo(REPO_ID, {"README.md": HAND_WRITTEN.encode()})
    env = _env(tmp_path, served.url, token=None)  # the token comes from --token alone

    for _ in range(2):  # a first and a second push
        done = _push(env, output, "--repo-id", REPO_ID, "--token", TOKEN)
        assert done.returncode == 0, done.stderr
        readme = fake.readme(REPO_ID)
        assert _body(readme) == _body(HAND_WRITTEN)
        meta = _meta(readme)
        assert meta["pretty_name"] == "Search traces" and meta["license"] == "apache-2.0"
        assert meta["tags"][0] == "agents" and "distillation" in meta["tags"]
        assert {"dataset_info", "configs"} <= set(meta)
    assert "--overwrite-card" in done.stderr

    done = _push(env, output, "--repo-id", REPO_ID, "--token", TOKEN, "--overwrite-card", "--license", "mit")
    assert done.returncode == 0, done.stderr
    readme = fake.readme(REPO_ID)
    meta = _meta(readme)
    assert "Notes written by hand" not in readme and "## Statistics" in readme
    assert _body(readme).strip().endswith(END_MARKER)
    assert meta["license"] == "mit" and meta["pretty_name"] == "Search traces"
    assert {"dataset_info", "configs"} <= set(meta)
    assert fake.unknown == []


@pytest.mark.parametrize(("token", "message", "code"), [
    pytest.param("hf_wrong", "the Hub refused the token (401 Unauthorized", 1, id="401"),
    pytest.param(None, "no Hugging Face token found", 2, id="no-token-is-bad-usage"),
])
def test_a_refused_or_missing_token_is_one_line(hub: tuple[FakeHub, Served], output: Path, tmp_path: Path,
                                                token: str | None, message: str, code: int) -> None:
    fake, served = hub
    done = _push(_env(tmp_path, served.url, token=token), output, "--repo-id", REPO_ID)
    assert done.returncode == code
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.strip().splitlines()[-1]] and len(errors) == 1
    assert message in errors[0] and "hf auth login" in errors[0] and "--token" in errors[0]
    assert REPO_ID not in fake.repos  # nothing was created


def test_an_unreachable_hub_is_one_line(output: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _push(_env(tmp_path, f"http://127.0.0.1:{port}"), output, "--repo-id", REPO_ID)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Hub at http://127.0.0.1:")


@pytest.mark.parametrize(("args", "foreign", "message"), [
    pytest.param(["--repo-id", "no-namespace"], False, "must look like USER/NAME", id="bad-repo-id"),
    pytest.param(["--repo-id", REPO_ID], True, "no hfdistill generation record", id="foreign-file"),
    pytest.param(["--repo-id", REPO_ID, "--license", "Apache 2"], False, "--license must be a Hub license id",
                 id="bad-license"),
])
def test_bad_arguments_fail_before_any_upload(hub: tuple[FakeHub, Served], output: Path, tmp_path: Path,
                                              args: list[str], foreign: bool, message: str) -> None:
    fake, served = hub
    path = output
    if foreign:  # the same rows without hfdistill's generation record
        path = tmp_path / "foreign.parquet"
        pq.write_table(pq.read_table(output).replace_schema_metadata(None), path)
    done = _push(_env(tmp_path, served.url), path, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert fake.requests == []


def test_generate_push_to_hub_pushes_after_a_complete_run(hub: tuple[FakeHub, Served], tmp_path: Path,
                                                          env: dict[str, str], real_layout: Path,
                                                          teacher: tuple[FakeTeacher, Served]) -> None:
    fake, served = hub
    out = tmp_path / "distilled.parquet"
    done = subprocess.run([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(real_layout),
                           "--output_file", str(out), "--push-to-hub", REPO_ID, "--license", "apache-2.0",
                           "--api-key", "sk-very-secret"],
                          env={**_env(tmp_path, served.url), **env}, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert f"pushed {out} and its card to {served.url}/datasets/{REPO_ID}" in done.stderr
    meta = _meta(fake.readme(REPO_ID))
    assert meta["license"] == "apache-2.0" and {"dataset_info", "configs"} <= set(meta)
    # the key never reaches the file's record nor the card
    assert b"sk-very-secret" not in out.read_bytes()
    assert "sk-very-secret" not in fake.readme(REPO_ID)


def test_generate_checks_the_push_target_before_any_teacher_call(hub: tuple[FakeHub, Served], tmp_path: Path,
                                                                 env: dict[str, str], real_layout: Path,
                                                                 teacher: tuple[FakeTeacher, Served]) -> None:
    fake, served = hub
    done = subprocess.run([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(real_layout),
                           "--output_file", str(tmp_path / "o.parquet"), "--push-to-hub", "no-namespace"],
                          env={**_env(tmp_path, served.url), **env}, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, check=False)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Hub repo id (--repo-id / --push-to-hub) must look like USER/NAME")
    assert teacher[0].requests == [] and fake.requests == []
