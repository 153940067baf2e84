"""The vLLM server's flags: the table per model family, --serve-args parsed and laid over them, the context length
from the model's configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.teacher.serve.flags import family_of, merge, parse_options, server_flags
from hfdistill.teacher.serve.model import read_model_config

QWEN3 = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"]
PRIORITY = ["--scheduling-policy", "priority"]


@pytest.mark.parametrize(("model", "model_type", "family"), [
    pytest.param("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B", "qwen3_moe", "qwen3", id="tongyi-by-config"),
    pytest.param("Qwen/Qwen3-8B", "qwen3", "qwen3", id="qwen3-by-config"),
    pytest.param("/models/my-finetune", "qwen3_moe", "qwen3", id="a-directory-by-config"),
    pytest.param("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B", None, "qwen3", id="tongyi-by-name"),
    pytest.param("meta-llama/Llama-3.1-8B-Instruct", "llama", None, id="not-in-the-table"),
    pytest.param("someone/qwen3-lookalike", "llama", None, id="the-config-wins-over-the-name"),
])
def test_the_family_comes_from_the_config_else_the_name(model: str, model_type: str | None,
                                                        family: str | None) -> None:
    found = family_of(model, model_type)
    assert (found.name if found else None) == family


@pytest.mark.parametrize(("text", "options"), [
    pytest.param("--max-num-seqs 256", [("--max-num-seqs", ("256",))], id="flag-and-value"),
    pytest.param("--max-num-seqs=256 --enforce-eager", [("--max-num-seqs", ("256",)), ("--enforce-eager", ())],
                 id="equals-and-switch"),
    pytest.param("--stop a b --x", [("--stop", ("a", "b")), ("--x", ())], id="several-values"),
    pytest.param("--seed -1", [("--seed", ("-1",))], id="a-negative-number-is-a-value"),
    pytest.param("", [], id="empty"),
])
def test_serve_args_parse_into_options(text: str, options: list[tuple[str, tuple[str, ...]]]) -> None:
    assert parse_options(text.split()) == options


def test_serve_args_must_start_with_a_flag() -> None:
    with pytest.raises(ConfigError, match="must start with a flag"):
        parse_options(["256", "--max-num-seqs"])


@pytest.mark.parametrize(("overrides", "expected"), [
    pytest.param("--tool-call-parser qwen3_xml",
                 [QWEN3[0], "--tool-call-parser", "qwen3_xml", *QWEN3[3:], *PRIORITY], id="replaces-flag-and-value"),
    pytest.param("--tool_call_parser=qwen3_xml",
                 [QWEN3[0], "--tool_call_parser", "qwen3_xml", *QWEN3[3:], *PRIORITY], id="other-spellings"),
    pytest.param("--scheduling-policy fcfs", [*QWEN3, "--scheduling-policy", "fcfs"], id="priority-turned-off"),
    pytest.param("--no-enable-auto-tool-choice", ["--no-enable-auto-tool-choice", *QWEN3[1:], *PRIORITY],
                 id="a-switch-negated"),
    pytest.param("--max-num-seqs 256 --enforce-eager", [*QWEN3, *PRIORITY, "--max-num-seqs", "256", "--enforce-eager"],
                 id="new-flags-appended"),
])
def test_an_override_replaces_the_flag_and_its_value(overrides: str, expected: list[str]) -> None:
    assert server_flags("Qwen/Qwen3-8B", "qwen3", max_model_len=None, tensor_parallel=1,
                        serve_args=overrides) == expected


def test_the_context_length_and_tensor_parallelism_are_flags_too() -> None:
    assert server_flags("m", "llama", max_model_len=32768, tensor_parallel=4) == [
        *PRIORITY, "--max-model-len", "32768", "--tensor-parallel-size", "4"]
    quoted = server_flags("m", "llama", max_model_len=32768, tensor_parallel=1,
                          serve_args="--max-model-len 8192 --chat-template-kwargs '{\"enable_thinking\": false}'")
    assert quoted == [*PRIORITY, "--max-model-len", "8192", "--chat-template-kwargs", '{"enable_thinking": false}']


@pytest.mark.parametrize(("serve_args", "message"), [
    pytest.param("--port 9000", "--serve-port", id="port"),
    pytest.param("--host=0.0.0.0", "--serve-host", id="host"),
    pytest.param("--model other", "--serve MODEL", id="model"),
    pytest.param("-tp 2", "--serve-tensor-parallel", id="tensor-parallel-short"),
    pytest.param("--tensor_parallel_size 2", "--serve-tensor-parallel", id="tensor-parallel"),
    pytest.param("--data-parallel-size 2", "one server per replica", id="data-parallel"),
    pytest.param("--stop 'unclosed", "cannot be read as a command line", id="bad-quoting"),
])
def test_flags_hfdistill_sets_itself_are_refused(serve_args: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_flags("m", None, max_model_len=None, tensor_parallel=1, serve_args=serve_args)


def test_merge_keeps_the_order_of_the_base() -> None:
    base = [("--a", ("1",)), ("--b", ())]
    assert merge(base, [("--b", ("x",)), ("--c", ())]) == [("--a", ("1",)), ("--b", ("x",)), ("--c", ())]


def _model(tmp_path: Path, config: object, name: str = "model") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(("config", "model_type", "window"), [
    pytest.param({"model_type": "qwen3_moe", "max_position_embeddings": 131072}, "qwen3_moe", 131072, id="plain"),
    pytest.param({"model_type": "qwen2_5_vl", "text_config": {"max_position_embeddings": 128000}}, "qwen2_5_vl",
                 128000, id="nested-text-config"),
    pytest.param({"architectures": ["X"]}, None, None, id="neither"),
])
def test_the_model_configuration_is_read_from_a_directory(tmp_path: Path, config: dict[str, object],
                                                          model_type: str | None, window: int | None) -> None:
    read = read_model_config(str(_model(tmp_path, config)))
    assert (read.model_type, read.max_position_embeddings, read.local) == (model_type, window, True)
    assert Path(read.model).is_absolute()


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda d: d, "without a config.json", id="no-config"),
    pytest.param(lambda d: _model(d, ["not", "an", "object"]), "not a model configuration", id="not-an-object"),
    pytest.param(lambda d: (_model(d, {}) / "config.json").write_text("{") and d / "model", "cannot read",
                 id="not-json"),
])
def test_a_directory_that_is_no_model_is_one_error(tmp_path: Path, make: object, message: str) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        read_model_config(str(target))


def test_a_model_id_that_is_neither_a_directory_nor_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a directory nor a Hugging Face model id"):
        read_model_config(str(tmp_path / "no such" / "dir//x"))


def test_a_hub_model_not_in_the_cache_offline_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        read_model_config("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B")
