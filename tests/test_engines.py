"""Choosing an engine: bad input under `--engine ray` fails before the driver touches a cluster, with the
local run's one-line errors; Ray is optional (a clear error without it, never imported by a local run)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hfdistill.cli.main import main
from hfdistill.core.errors import ConfigError
from hfdistill.engines import check_engine
from hfdistill.engines.ray import MAX_DEFAULT_ACTORS, pool_size
from tests.conftest import write_jsonl

# Nothing listens there: a driver that tried to reach Ray before failing would say so instead.
NO_CLUSTER = "127.0.0.1:1"
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")


@needs_ray
@pytest.mark.parametrize(("argv", "code", "message"), [
    pytest.param(lambda t, i: ["--input_file", str(t / "nope.parquet")], 2, r"input file not found",
                 id="missing-input"),
    pytest.param(lambda t, i: ["--input_file", i, "--question-field", "extra_info.query"], 2,
                 r"--question-field 'extra_info\.query' is not in the input", id="missing-field"),
    pytest.param(lambda t, i: ["--input_file", i, "--max_assistant_turns", "0"], 2,
                 r"--max_assistant_turns must be >= 1", id="bad-option"),
    pytest.param(lambda t, i: ["--input_file", i, "--ray-actors", "0"], 2, r"--ray-actors must be >= 1",
                 id="no-actors"),
    pytest.param(lambda t, i: ["--input_file", i, "--vllm_url", "http://127.0.0.1:1/v1"], 1,
                 r"cannot reach the teacher at http://127\.0\.0\.1:1/v1", id="teacher-down"),
])
def test_bad_input_under_ray_fails_before_any_actor_starts(
        argv: Callable[[Path, str], list[str]], code: int, message: str, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_ADDRESS", NO_CLUSTER)
    monkeypatch.chdir(tmp_path)
    data = str(write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the capital of France?"}]))
    assert main(["generate", "-q", "--engine", "ray", *argv(tmp_path, data)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]


def test_engine_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--engine must be one of local, ray, got 'spark'"):
        check_engine("spark", None)
    with pytest.raises(ConfigError, match="--ray-actors applies to --engine ray only"):
        check_engine("local", 4)


def _python(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_engine_ray_without_ray_installed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # sys.modules["ray"] = None is how Python's import system marks a module that cannot be imported.
    write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the capital of France?"}])
    done = _python("import sys; sys.modules['ray'] = None\n"
                   "from hfdistill.cli.main import main\n"
                   "sys.exit(main(['generate', '--engine', 'ray', '--input_file', 'q.jsonl']))", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == 'error: --engine ray needs Ray, which is not installed: pip install "hfdistill[ray]"'


def test_a_local_run_never_imports_ray(env: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the capital of France?",
                                               "golden_answers": ["Paris"]}])
    done = _python("import sys\n"
                   "from hfdistill.cli.main import main\n"
                   f"code = main(['generate', '-q', '--input_file', {str(data)!r}])\n"
                   "assert 'ray' not in sys.modules, 'a local run imported ray'\n"
                   "sys.exit(code)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("actors", "cpus", "tasks", "size", "warns"), [
    (None, 4, 100, 4, False),  # one actor per CPU
    (None, 96, 1000, MAX_DEFAULT_ACTORS, False),  # at most 32 unless asked
    (None, 4, 2, 2, False),  # never more actors than tasks
    (8, 4, 100, 8, False),  # half a CPU each: 8 fit on 4 CPUs
    (9, 4, 100, 9, True),  # 9 do not: said before the pool waits for them
    (9, 4, 3, 3, False),
])
def test_the_pool_is_sized_from_the_cluster_and_an_oversized_one_is_announced(
        actors: int | None, cpus: float, tasks: int, size: int, warns: bool) -> None:
    got, warning = pool_size(actors, cpus, tasks)
    assert got == size
    assert (warning is not None) == warns
    if warning:
        assert "lower --ray-actors to 8 or add nodes" in warning
