"""Which GPUs the servers get: CUDA_VISIBLE_DEVICES or --serve-gpus, split into replicas of N GPUs each."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.teacher.serve.gpus import parse_gpu_list, split_replicas, visible_gpus
from hfdistill.teacher.serve.plan import ServePlan


@pytest.mark.parametrize(("gpus", "tp", "replicas"), [
    pytest.param(["0", "1", "2", "3"], 1, [("0",), ("1",), ("2",), ("3",)], id="one-gpu-each"),
    pytest.param(["0", "1", "2", "3", "4", "5", "6", "7"], 2, [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")],
                 id="pairs"),
    pytest.param(["4", "5", "6", "7"], 4, [("4", "5", "6", "7")], id="one-server-on-all"),
    pytest.param(["GPU-a1", "GPU-b2"], 1, [("GPU-a1",), ("GPU-b2",)], id="uuids"),
    pytest.param([], 1, [()], id="no-gpu-one-cpu-server"),
])
def test_gpus_split_into_replicas(gpus: list[str], tp: int, replicas: list[tuple[str, ...]]) -> None:
    assert split_replicas(gpus, tp) == replicas


@pytest.mark.parametrize(("gpus", "tp", "message"), [
    pytest.param(["0", "1", "2"], 2, "do not split into replicas of 2", id="leftover"),
    pytest.param([], 2, "needs GPUs", id="tensor-parallel-without-gpus"),
    pytest.param(["0"], 0, "must be >= 1", id="zero"),
])
def test_gpus_that_do_not_split_are_one_error(gpus: list[str], tp: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_replicas(gpus, tp)


@pytest.mark.parametrize(("text", "ids"), [
    pytest.param("0,1,2,3", ("0", "1", "2", "3"), id="plain"),
    pytest.param(" 2, 3 ", ("2", "3"), id="spaces"),
    pytest.param("0,1,-1,2", ("0", "1"), id="minus-one-hides-the-rest"),
])
def test_gpu_lists_read_as_cuda_reads_them(text: str, ids: tuple[str, ...]) -> None:
    assert parse_gpu_list(text) == ids


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("0,,1", "empty entry", id="empty-entry"),
    pytest.param("0,1,0", "twice", id="twice"),
])
def test_bad_gpu_lists_are_one_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_gpu_list(text)


def test_cuda_visible_devices_wins_and_an_empty_one_hides_every_gpu() -> None:
    assert visible_gpus("2,3") == ("2", "3")
    assert visible_gpus("") == ()


def test_without_cuda_visible_devices_nvidia_smi_lists_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"  # a stand-in answering as nvidia-smi does on a 4-GPU machine
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert visible_gpus(None) == ("0", "1", "2", "3")


def test_this_machine_has_no_gpu_so_one_cpu_server() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    assert visible_gpus(None) == ()
    assert split_replicas(visible_gpus(None), 1) == [()]


def test_each_replica_sees_only_its_gpus_in_nvidia_smi_order() -> None:
    plan = ServePlan(model="m", python="python", flags=(), replicas=(("0", "1"), ("2", "3")), env=(("A", "b"),))
    assert plan.environment(("2", "3")) == {"A": "b", "CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert plan.environment(()) == {"A": "b"}  # a CPU server, or a Ray host whose GPUs Ray set
