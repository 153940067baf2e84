"""The real-engine tier: hfdistill against vLLM 0.32 (CPU build) serving a tiny Qwen3 that writes a script.

Three server configurations, one server at a time: plain (`vllm serve`, with an API key), a reasoning parser
only, and the hermes tool parser with the reasoning parser. In each, one `hfdistill generate --corpus` run
covers every scenario of `vllm_fixture/scenarios.py`; the tests then check the stored rows (every guarantee
of docs/output-schema.md) and, through the scripted model's prompt log, what the teacher saw of its own earlier
turns.
Run alone with `python -m pytest -m vllm` (cold: builds vLLM's venv, minutes; warm: see docs/vllm.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hfdistill.cli.main import main
from hfdistill.core.prompts import Prompts
from hfdistill.core.templates import Templates
from hfdistill.core.tools import SearchTool
from tests.corpus_util import write_jsonl
from tests.verl_rules import check_output
from tests.vllm_env import ensure_vllm_venv
from tests.vllm_fixture.scenarios import SCENARIOS
from tests.vllm_server import MAX_MODEL_LEN, SERVED_NAME, Engine, build_models, start_engine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

API_KEY = "sk-hfdistill-test"
MAX_TURNS = 4
MAX_TOKENS = 96
NATIVE_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")


@dataclass(frozen=True)
class ServerConfig:
    model: str  # "dense" or "moe"
    flags: tuple[str, ...]
    modes: tuple[str, ...]  # the --tool-call-mode of each run against it
    api_key: str | None = None


CONFIGS = {
    "plain": ServerConfig("dense", (), ("auto",), api_key=API_KEY),
    "reasoning-parser": ServerConfig("moe", ("--reasoning-parser", "qwen3"), ("auto",)),
    "tool-parser": ServerConfig("moe", NATIVE_FLAGS, ("auto", "text")),
}

CORPUS = [
    {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France.'},
    {"id": "1", "contents": '"France"\nFrance is a country in Western Europe. Its capital is Paris.'},
    {"id": "2", "contents": '"Zürich"\nZürich is the largest city in Switzerland; its cafés are famous.'},
    {"id": "3", "contents": '"Berlin"\nBerlin is the capital of Germany.'},
]

# scenario: (stop reason, assistant turns, searches made, tool-call errors)
EXPECTED: dict[str, tuple[str, int, int, int]] = {
    "answer": ("answer", 1, 0, 0),
    "search-1": ("answer", 2, 1, 0),
    "search-2": ("answer", 3, 2, 0),
    "search-3": ("answer", 4, 3, 0),
    "two-calls": ("answer", 2, 1, 0),
    "malformed": ("answer", 3, 1, 1),
    "trailing-comma": ("answer", 2, 1, 0),
    "unclosed": ("answer", 2, 1, 0),
    "unknown-tool": ("answer", 3, 1, 1),
    "query-string": ("answer", 2, 1, 0),
    "unicode": ("answer", 2, 1, 0),
    "no-open-think": ("answer", 2, 1, 0),
    "cut-in-think": ("length", 2, 1, 0),
    "cut-after-think": ("length", 1, 0, 0),
    "hallucinated-response": ("answer", 2, 1, 0),
    "no-tool-call": ("no_tool_call", 1, 0, 0),
    "max-turns": ("max_turns", MAX_TURNS, MAX_TURNS, 0),
    "overflow": ("context", 0, 0, 0),
    "at-limit": ("context", 0, 0, 0),
    "near-limit": ("context", 1, 0, 0),
}
# Prompt lengths (tokens) of the padded context scenarios.
PADDED = {"overflow": MAX_MODEL_LEN + 50, "at-limit": MAX_MODEL_LEN, "near-limit": MAX_MODEL_LEN - 40}
# Turns that cannot come back byte for byte in the native protocol: several calls are sent back folded into
# one, and the chat template renders a parsed call with its closing tag even when the model left it out.
NOT_VERBATIM_NATIVE = {"two-calls", "unclosed"}


@dataclass
class Run:
    """One generate run: its exit code, failures, rows and the prompts the model saw, by scenario."""

    mode: str  # the protocol the run used: "native" or "text"
    rc: int
    failures: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    rows: dict[str, dict[str, Any]]
    prompts: dict[str, list[dict[str, Any]]]
    all_prompts: list[dict[str, Any]]


# ---------------------------------------------------------------- fixtures: one server per configuration


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    return ensure_vllm_venv()


@pytest.fixture(scope="session")
def tiny_models(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(vllm_python, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module", params=list(CONFIGS))
def engine(request: pytest.FixtureRequest, vllm_python: Path, tiny_models: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerConfig, Engine]]:
    name = request.param
    config = CONFIGS[name]
    server = start_engine(vllm_python, tiny_models[config.model], tmp_path_factory.mktemp(f"vllm-{name}"),
                          config.flags, api_key=config.api_key)
    yield name, config, server
    server.stop()


@pytest.fixture(scope="module")
def runs(engine: tuple[str, ServerConfig, Engine], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    name, config, server = engine
    work = tmp_path_factory.mktemp(f"runs-{name}")
    corpus = write_jsonl(work / "small.jsonl", CORPUS)
    return {mode: _generate(server, config, mode, corpus, work) for mode in config.modes}


def _generate(server: Engine, config: ServerConfig, mode: str, corpus: Path, work: Path) -> Run:
    protocol = "native" if mode == "auto" and "--tool-call-parser" in config.flags else mode
    protocol = "text" if protocol == "auto" else protocol
    questions = [_question(server, s, protocol == "text") for s in EXPECTED] + ["   "]  # blank: never sent
    inp = write_jsonl(work / f"{mode}.jsonl", [{"question": q, "golden_answers": ["Paris"]} for q in questions])
    out = work / f"{mode}.parquet"
    server.prompt_log.unlink(missing_ok=True)
    rc = main(["generate", "--vllm_url", f"{server.url}/v1", "--corpus", str(corpus), "--input_file", str(inp),
               "--output_file", str(out), "--max_assistant_turns", str(MAX_TURNS), "--max_tokens", str(MAX_TOKENS),
               "--temperature", "0", "--tool-call-mode", mode, "--api-key", config.api_key or "EMPTY", "-q",
               "--keep-malformed"])  # the non-JSON call's row is written (flagged) so its guarantees are checked
    rows = {_scenario(r["question"]): r for r in check_output(out)}
    prompts: dict[str, list[dict[str, Any]]] = {}
    for entry in server.prompts():
        prompts.setdefault(entry["scenario"], []).append(entry)
    return Run(protocol, rc, _jsonl(work / f"{mode}.failures.jsonl"), _jsonl(work / f"{mode}.skipped.jsonl"), rows,
               prompts, server.prompts())


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _scenario(question: str) -> str:
    return question.split("]", 1)[0].lstrip("[")


def _question(server: Engine, scenario: str, text_protocol: bool) -> str:
    """`[scenario] What is the capital of France?`, or for a context scenario padded to its prompt length."""
    if scenario not in PADDED:
        return f"[{scenario}] What is the capital of France?"
    prompts = Prompts.build(Templates(), [SearchTool()])
    target, words = PADDED[scenario], 0
    for _ in range(8):  # the count is linear in the padding: this converges in one or two steps
        question = f"[{scenario}] What is the capital of France? " + " ".join(["word"] * words)
        body: dict[str, Any] = {
            "model": SERVED_NAME, "add_generation_prompt": True,
            "messages": [{"role": "system", "content": prompts.system_on_wire(text_protocol)},
                         {"role": "user", "content": prompts.user(question.strip(), ["Paris"])}]}
        if not text_protocol:
            body["tools"] = prompts.tools
        status, data = server.post("/tokenize", body)
        assert status == 200, data
        if data["count"] == target:
            return question.strip()
        words += target - data["count"]
    raise AssertionError(f"could not pad {scenario} to {target} tokens")


# ---------------------------------------------------------------- what was stored


def test_the_run_finishes_with_only_the_blank_question_left_out(runs: dict[str, Run]) -> None:
    for run in runs.values():
        assert sorted(run.rows) == sorted(EXPECTED)
        assert run.failures == []
        assert run.skipped == [{"input_index": len(EXPECTED), "reason": "blank question"}]
        assert run.rc == 0
        flagged = sorted(s for s, r in run.rows.items() if "malformed_call" in r["quality_flags"])
        assert flagged == ["malformed"]  # a non-JSON call is one kind of tool_error
        assert {"tool_error", "malformed_call"} <= set(run.rows["malformed"]["quality_flags"])
        # never sent as "Question: ": every prompt the model saw names a scenario, but the start-up probe
        unscripted = [p["prompt"] for p in run.all_prompts if p["scenario"] not in SCENARIOS]
        assert all("Say OK.<|im_end|>" in p and "Question:" not in p for p in unscripted), unscripted


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_stop_reasons_and_counters(runs: dict[str, Run], scenario: str) -> None:
    for run in runs.values():
        row = run.rows[scenario]
        got = (row["stop_reason"], row["assistant_turns"], row["num_tool_calls"], row["num_tool_errors"])
        assert got == EXPECTED[scenario], f"{run.mode}: {scenario}"
        # the teacher was asked exactly once per turn (a context refusal never reaches the model)
        assert sorted(p["turn"] for p in run.prompts.get(scenario, [])) == list(range(row["assistant_turns"]))
        assert row["prediction"] == ("Paris" if EXPECTED[scenario][0] == "answer" else "")


def test_thinking_is_in_reasoning_content_never_inline(runs: dict[str, Run]) -> None:
    for run in runs.values():
        for scenario, row in run.rows.items():
            for m in row["messages"]:
                assert "<think>" not in m["content"] and "</think>" not in m["content"], (run.mode, scenario, m)
                if m["role"] == "assistant":
                    assert m["reasoning_content"], (run.mode, scenario, m)
        first = {s: r["messages"][2]["reasoning_content"] for s, r in run.rows.items() if r["assistant_turns"]}
        assert first["search-1"] == "I should look this up."
        assert first["no-open-think"] == "I start thinking without the tag."
        assert first["cut-after-think"] == "Short thought."
        assert run.rows["cut-after-think"]["messages"][2]["content"].startswith("Paris is the capital, and let me")
        cut = run.rows["cut-in-think"]["messages"][-1]
        assert cut["content"] == "" and cut["reasoning_content"].startswith("I keep thinking about this question")
        near = run.rows["near-limit"]["messages"][-1]
        assert near["content"] == "" and near["reasoning_content"].startswith("I keep thinking")


def _first_call(run: Run, scenario: str) -> dict[str, Any]:
    assistant = run.rows[scenario]["messages"][2]
    [stored] = assistant["tool_calls"]
    assert assistant["content"] == ""
    return {"name": stored["function"]["name"], **json.loads(stored["function"]["arguments"])}


def test_calls_are_stored_as_calls_with_verl_argument_names(runs: dict[str, Run]) -> None:
    for run in runs.values():
        assert _first_call(run, "search-1") == {"name": "search", "query_list": ["capital of France"]}
        assert _first_call(run, "query-string") == {"name": "search", "query_list": ["capital of France"]}
        assert _first_call(run, "unicode") == {"name": "search", "query_list": ["Zürich café"]}
        assert _first_call(run, "two-calls") == {"name": "search", "query_list": ["capital of France", "Paris"]}
        assert _first_call(run, "trailing-comma") == _first_call(run, "unclosed") == _first_call(run, "search-1")
        # the result the model went on to invent is not kept
        assert _first_call(run, "hallucinated-response") == _first_call(run, "search-1")
        assert _first_call(run, "unknown-tool") == {"name": "browse", "url": "https://example.org"}
        tool = run.rows["unknown-tool"]["messages"][3]
        assert tool["name"] == "browse" and "unknown tool 'browse'" in tool["content"]
        zurich = run.rows["unicode"]["messages"][3]["content"]
        assert "Zürich is the largest city in Switzerland" in zurich  # retrieved from the corpus, unescaped


# ---------------------------------------------------------------- what the teacher saw


def _as_rendered(completion: str) -> str:
    """A completion as the Qwen3 template renders it back: thinking always opened, the stop string cut."""
    completion = completion.split("\n<tool_response>", 1)[0]
    return completion if completion.startswith("<think>") else "<think>\n" + completion


@pytest.mark.parametrize("scenario", [s for s, e in EXPECTED.items() if e[1] > 1])
def test_the_teacher_sees_its_own_earlier_turns_as_it_wrote_them(runs: dict[str, Run], scenario: str) -> None:
    steps = SCENARIOS[scenario]
    for run in runs.values():
        for prompt in run.prompts[scenario]:
            for earlier in range(prompt["turn"]):
                written = _as_rendered(steps[min(earlier, len(steps) - 1)])
                thought = written.split("</think>", 1)[0] + "</think>"
                assert thought in prompt["prompt"], f"{run.mode}: turn {earlier}'s thinking is missing"
                if run.mode == "text" or scenario not in NOT_VERBATIM_NATIVE:
                    turn = f"<|im_start|>assistant\n{written}<|im_end|>"
                    assert turn in prompt["prompt"], f"{run.mode}: turn {earlier} not as written"
            # every result came back in the model's own format, once per earlier turn
            assert prompt["prompt"].count("<tool_response>\n") == prompt["turn"]


# ---------------------------------------------------------------- an MCP server's tools


MCP_EXPECTED = {  # scenario: (stop reason, assistant turns, tool calls run by name, tool-call errors)
    "mcp-calculate": ("answer", 2, [{"name": "calculate", "calls": 1}], 0),
    "mcp-fail": ("answer", 3, [{"name": "fail", "calls": 1}, {"name": "search", "calls": 1}], 1),
    "mcp-bad-arguments": ("answer", 2, [], 1),
}


def test_calls_to_an_mcp_servers_tools(engine: tuple[str, ServerConfig, Engine], tmp_path: Path) -> None:
    """One server (hermes and the reasoning parser), both protocols, three questions: a few seconds."""
    name, config, server = engine
    if name != "tool-parser":
        pytest.skip("one server is enough: the MCP tools are the client's business")
    from tests.mcp_servers import stdio_command

    log = tmp_path / "calls.jsonl"
    for mode in config.modes:
        inp = write_jsonl(tmp_path / f"{mode}.jsonl", [{"question": f"[{s}] How far is it?", "golden_answers": []}
                                                       for s in MCP_EXPECTED])
        out = tmp_path / f"{mode}.parquet"
        assert main(["generate", "--vllm_url", f"{server.url}/v1", "--corpus", str(_corpus(tmp_path)), "--input_file",
                     str(inp), "--output_file", str(out), "--max_assistant_turns", str(MAX_TURNS), "--max_tokens",
                     "160", "--temperature", "0", "--tool-call-mode", mode, "--mcp", stdio_command("calc", log),
                     "--tools", "search,calculate,fail", "-q"]) == 0
        rows = {_scenario(r["question"]): r for r in check_output(out)}
        for scenario, (stop, turns, by_name, errors) in MCP_EXPECTED.items():
            row = rows[scenario]
            got = (row["stop_reason"], row["assistant_turns"], row["tool_calls_by_name"], row["num_tool_errors"])
            assert got == (stop, turns, by_name, errors), f"{mode}: {scenario}"
        calculate = rows["mcp-calculate"]["messages"]
        assert json.loads(calculate[2]["tool_calls"][0]["function"]["arguments"]) == {
            "operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": 2}]}
        assert calculate[3]["content"] == '{\n  "value": 3.5,\n  "unit": "km"\n}'
        assert rows["mcp-fail"]["messages"][3]["content"] == "Error executing tool fail: the lookup failed: no page"
        assert "'divide' is not one of ['add', 'multiply']" in rows["mcp-bad-arguments"]["messages"][3]["content"]
    assert [c["tool"] for c in _jsonl(log)].count("calculate") == len(config.modes)  # bad arguments never sent


# ---------------------------------------------------------------- start-up


def test_native_mode_against_a_server_without_a_tool_parser_fails_at_start(
        engine: tuple[str, ServerConfig, Engine], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, config, server = engine
    if "--tool-call-parser" in config.flags:
        pytest.skip("this server has a tool parser")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": "[answer] What is the capital of France?"}])
    out = tmp_path / "out.parquet"
    before = _rollout_prompts(server)
    rc = main(["generate", "--vllm_url", f"{server.url}/v1", "--corpus", str(_corpus(tmp_path)),
               "--input_file", str(inp), "--output_file", str(out), "--tool-call-mode", "native",
               "--api-key", config.api_key or "EMPTY"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in errors[0] and "--tool-call-mode text" in errors[0]
    # no rollout reached the model (only the probe without tools=, which tells a refused field from a refused key)
    assert not out.exists() and _rollout_prompts(server) == before


def _rollout_prompts(server: Engine) -> int:
    return sum("Say OK.<|im_end|>" not in p["prompt"] for p in server.prompts())


def test_a_wrong_api_key_is_one_line_at_start(engine: tuple[str, ServerConfig, Engine], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, config, server = engine
    if config.api_key is None:
        pytest.skip("this server takes no API key")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": "[answer] What is the capital of France?"}])
    rc = main(["generate", "--vllm_url", f"{server.url}/v1", "--corpus", str(_corpus(tmp_path)),
               "--input_file", str(inp), "--output_file", str(tmp_path / "out.parquet"), "--api-key", "wrong"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "refused the API key" in errors[0]


def _corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "small.jsonl", CORPUS)
