"""The Python API: `Dataset.map` with `Distiller`, as a user script writes it."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
from datasets.fingerprint import Hasher

from hfdistill import DistillConfig, Distiller
from hfdistill.core.errors import ConfigError
from hfdistill.engines.runtime import batch_budget
from hfdistill.run.inputs import InputRow
from hfdistill.run.recorder import Collector
from tests.conftest import QUESTIONS, write_verl_parquet
from tests.fakes import FakeRetriever, FakeTeacher, Served
from tests.verl_rules import check_output

USER_SCRIPT = """
import os
from datasets import load_dataset
from hfdistill import DistillConfig, Distiller
from hfdistill.core.errors import ConfigError
from hfdistill.engines.runtime import batch_budget
from hfdistill.run.inputs import InputRow
from hfdistill.run.recorder import Collector

ds = load_dataset("parquet", data_files=os.environ["INPUT_FILE"], split="train")
distiller = Distiller(DistillConfig(vllm_url=os.environ["VLLM_URL"], retrieval_url=os.environ["RETRIEVAL_URL"]))
out = ds.map(distiller.map_batch, batched=True, batch_size=2, remove_columns=ds.column_names)
distiller.close()
out.to_parquet(os.environ["OUTPUT_FILE"])
print(out.num_rows)
"""


def test_a_user_script_with_dataset_map(env: dict[str, str], real_layout: Path, tmp_path: Path) -> None:
    script = tmp_path / "distil.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    out = tmp_path / "distilled.parquet"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "INPUT_FILE": str(real_layout), "OUTPUT_FILE": str(out)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(len(QUESTIONS))
    rows = check_output(out)
    assert [r["question"] for r in rows] == [q for q, _ in QUESTIONS]
    assert all(r["stop_reason"] == "answer" for r in rows)


def _config(teacher: Served, retriever: Served, **kw: object) -> DistillConfig:
    return DistillConfig(vllm_url=f"{teacher.url}/v1", retrieval_url=f"{retriever.url}/retrieve", **kw)


def test_pickles_as_its_configuration_and_fingerprints_deterministically(
        teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served]) -> None:
    config = _config(teacher[1], retriever[1])
    a, b = Distiller(config), Distiller(config)
    assert pickle.loads(pickle.dumps(a)).config == config
    assert Hasher.hash(a.map_batch) == Hasher.hash(b.map_batch)
    assert Hasher.hash(a.map_batch) != Hasher.hash(Distiller(config.replace(temperature=0.1)).map_batch)


def test_map_cache_is_reused_for_the_same_configuration(teacher: tuple[FakeTeacher, Served],
                                                         retriever: tuple[FakeRetriever, Served],
                                                         tmp_path: Path) -> None:
    path = write_verl_parquet(tmp_path / "in.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    config = _config(teacher[1], retriever[1])
    for attempt in range(2):
        distiller = Distiller(config)  # a fresh object each time, as in a rerun of the script
        out = ds.map(distiller.map_batch, batched=True, batch_size=2, remove_columns=ds.column_names,
                     features=distiller.output_features(ds.features))
        distiller.close()
        assert out.num_rows == len(QUESTIONS)
        if attempt == 0:
            calls = teacher[0].chat_calls
    assert teacher[0].chat_calls == calls  # the second map came from datasets' cache


def test_the_window_bounds_requests_in_flight_across_batches(teacher: tuple[FakeTeacher, Served],
                                                              retriever: tuple[FakeRetriever, Served]) -> None:
    fake, served = teacher
    fake.behaviour.delay = 0.05
    ds = datasets.Dataset.from_list([{"question": f"Question number {i}?"} for i in range(24)])
    with Distiller(_config(served, retriever[1], concurrency=5)) as distiller:
        out = distiller.map(ds, batch_size=2)
    assert out.num_rows == 24
    assert fake.max_in_flight == 5  # used fully, never exceeded


def test_map_closes_the_event_loop_datasets_made_for_it(teacher: tuple[FakeTeacher, Served],
                                                        retriever: tuple[FakeRetriever, Served]) -> None:
    ds = datasets.Dataset.from_list([{"question": f"Question number {i}?"} for i in range(4)])
    # (type(), not isinstance: isinstance reads __class__, which some modules' lazy attributes answer with a warning)
    before = {id(o) for o in gc.get_objects() if issubclass(type(o), asyncio.AbstractEventLoop)}
    with Distiller(_config(teacher[1], retriever[1])) as distiller:
        assert distiller.map(ds, batch_size=2).num_rows == 4
        made = [o for o in gc.get_objects() if issubclass(type(o), asyncio.AbstractEventLoop) and id(o) not in before]
    assert made and all(loop.is_closed() for loop in made)


def test_no_barrier_between_map_batches(teacher: tuple[FakeTeacher, Served],
                                        retriever: tuple[FakeRetriever, Served]) -> None:
    fake, served = teacher
    slow = "The slow question in batch one?"
    fake.question_delay[slow] = 1.5
    questions = [slow, "Fast question A?", "Fast question B?", "Fast question C?"]
    ds = datasets.Dataset.from_list([{"question": q} for q in questions])
    with Distiller(_config(served, retriever[1])) as distiller:
        out = distiller.map(ds, batch_size=2)
    assert out["question"] == questions  # written in input order all the same
    first_end_of_slow = min(t for t, kind, q in fake.events if kind == "end" and q == slow)
    later_batch_done = max(t for t, kind, q in fake.events if kind == "end" and q in questions[2:])
    # batch two (questions 2 and 3) ran both turns to completion while batch one's slow row was still waiting
    assert later_batch_done < first_end_of_slow


def test_stream_reads_its_input_as_the_window_frees_up(teacher: tuple[FakeTeacher, Served],
                                                        retriever: tuple[FakeRetriever, Served]) -> None:
    fake, served = teacher
    fake.behaviour.delay = 0.02
    pulled: list[float] = []

    def rows() -> Iterator[InputRow]:
        for i in range(200):
            pulled.append(time.monotonic())
            yield InputRow(i, f"Question number {i}?", ("Paris",))

    with Distiller(_config(served, retriever[1], concurrency=4)) as distiller:
        recorder = Collector(distiller.tools)
        distiller.stream(rows(), recorder=recorder, batch_size=2)
    assert len(pulled) == 200 and not recorder.failures
    assert sum(1 for t, kind, _ in fake.events if kind == "end") == 2 * 200  # a search turn, then the answer
    first_answer = min(t for t, kind, _ in fake.events if kind == "end")
    # Before anything finished, only the batches that keep the window busy were read (batch_budget: 8 of 2 rows)
    assert sum(t < first_answer for t in pulled) <= batch_budget(4, 2) * 2
    assert fake.max_in_flight == 4


@pytest.mark.parametrize("concurrency", [None, 7])
def test_default_window_scales_with_endpoints(concurrency: int | None) -> None:
    config = DistillConfig(vllm_url="http://a:1/v1,http://b:2/v1", concurrency=concurrency)
    assert config.window == (1024 if concurrency is None else 7)


# ---------------------------------------------------------------- datasets' options


def test_num_proc_above_one_is_refused_clearly(teacher: tuple[FakeTeacher, Served],
                                               retriever: tuple[FakeRetriever, Served]) -> None:
    ds = datasets.Dataset.from_list([{"question": f"Question number {i}?"} for i in range(4)])
    distiller = Distiller(_config(teacher[1], retriever[1]))
    with pytest.raises(ConfigError, match="num_proc"):
        distiller.map(ds, num_proc=2)
    # a bare map in worker processes would lose its failures (they stay in the workers' copies): refused too
    with pytest.raises(Exception, match=r"worker process .*num_proc=1"):
        ds.map(distiller.map_batch, batched=True, batch_size=2, num_proc=2, remove_columns=ds.column_names)
    assert teacher[0].chat_calls == 0


@pytest.mark.parametrize("null_batch", [0, 1], ids=["first-batch", "later-batch"])
def test_a_bare_map_types_rows_whatever_extra_info_holds(teacher: tuple[FakeTeacher, Served],
                                                        retriever: tuple[FakeRetriever, Served],
                                                        null_batch: int) -> None:
    rows = [{"question": f"Question number {i}?", "extra_info": {"index": i, "split": "train"}} for i in range(4)]
    for row in rows[2 * null_batch: 2 * null_batch + 2]:
        row["extra_info"] = None  # one batch of two has no extra_info at all
    ds = datasets.Dataset.from_list(rows)
    distiller = Distiller(_config(teacher[1], retriever[1]))
    features = distiller.output_features(ds.features)
    kwargs = {"features": features} if null_batch == 0 else {}  # only a first all-null batch needs the features
    out = ds.map(distiller.map_batch, batched=True, batch_size=2, remove_columns=ds.column_names, **kwargs)
    distiller.close()
    assert out["extra_info"] == [r["extra_info"] for r in rows]  # kept as is, null included
    assert out.features["extra_info"] == ds.features["extra_info"]


def test_distiller_map_judges_in_the_window_and_fills_pass_rates(teacher: tuple[FakeTeacher, Served],
                                                                retriever: tuple[FakeRetriever, Served],
                                                                real_layout: Path) -> None:
    from hfdistill.core.config import JudgeConfig
    from tests.fake_judge import JUDGE_MODEL, FakeJudge

    judge = FakeJudge()
    judge.verdicts = {"Paris": "incorrect"}  # the scripted teacher answers "Paris" to every question
    served = Served(judge.app())
    try:
        config = _config(teacher[1], retriever[1], num_rollouts=2, judge=JudgeConfig(url=f"{served.url}/v1"))
        with Distiller(config) as distiller:
            out = distiller.map(datasets.load_dataset("parquet", data_files=str(real_layout), split="train"))
    finally:
        served.close()
    rows = out.to_list()
    assert [r["exact_match"] for r in rows] == [True, True, False, False, False, False]
    assert all(r["judge_correct"] is False for r in rows) and judge.calls == 6
    assert [r["pass_rate"] for r in rows] == [0.0] * 6  # the judge decides, not exact match
    assert distiller.judge_model == JUDGE_MODEL
