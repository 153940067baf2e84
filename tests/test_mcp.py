"""MCP servers' tools end to end: `generate` against the scripted teacher and real MCP servers on loopback (the
SDK's own server side, tests/mcp_servers.py), one over stdio and one over streamable HTTP.

The tools join the teacher's in both protocols; the model's mistakes (bad arguments, an unknown tool, a result
with isError) are observations; a server's faults are retried (an HTTP server killed mid-run and started
again leaves the rows exactly as a clean run's) and, when they outlast the retries, named in the failures file;
a conversation killed after an MCP call continues from it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.publish.card import build_card, load_card_inputs
from tests.conftest import record_of, write_jsonl
from tests.fakes import Answer, CallTool, FakeTeacher, Search, Served, TeacherBehaviour
from tests.mcp_servers import McpHttpServer, calls, stdio_command
from tests.verl_rules import check_output

FAST = ["--retry-backoff", "0.05", "--max-retries", "3", "--mcp-timeout", "10"]
SUM = {"operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": {"nested": 2}}]}  # bad: a dict
ADD = {"operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": 2}]}
QUESTIONS = {
    "How far is it in all?": [CallTool("calc_calculate", ADD), Answer("3.5 km")],
    "Which river flows through Paris?": [CallTool("web_search", {"query": "Seine Paris"}), Search(["river Paris"]),
                                         Answer("Seine")],
    "Can the lookup fail?": [CallTool("web_fail", {"reason": "no such page"}), CallTool("calc_calculate", SUM),
                             CallTool("browse", {"url": "x"}), Answer("no")],
}


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[McpHttpServer]:
    server = McpHttpServer("web", log=tmp_path / "web.calls.jsonl").start()
    yield server
    server.kill()


def _input(tmp_path: Path, questions: dict[str, Any]) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"question": q, "golden_answers": ["x"]} for q in questions])


def _script(teacher: FakeTeacher, questions: dict[str, list[Any]]) -> None:
    for question, steps in questions.items():
        teacher.script(question, *steps)


def _generate(inp: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--input_file", str(inp), "--output_file", str(out), *FAST, "--max_assistant_turns",
                 "5", *extra])


def _failures(out: Path) -> list[dict[str, Any]]:
    path = out.with_name(out.name.replace(".parquet", ".failures.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _tool_messages(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["name"], m["content"]) for m in row["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("protocol", ["native", "text"])
def test_mcp_tools_over_stdio_and_http_end_to_end(protocol: str, env: dict[str, str], tmp_path: Path,
                                                  teacher: tuple[FakeTeacher, Served], http_server: McpHttpServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake = teacher[0]
    fake.behaviour = TeacherBehaviour(native=protocol == "native", reasoning="reasoning" if protocol == "native"
                                      else None)
    _script(fake, QUESTIONS)
    calc_log = tmp_path / "calc.calls.jsonl"
    out = tmp_path / "o.parquet"
    assert _generate(_input(tmp_path, QUESTIONS), out, "--mcp", stdio_command("calc", calc_log), "--mcp-url",
                     http_server.url, "--tool-call-mode", protocol, "--keep", "all") == 0
    names = ["search", *(f"{s}_{t}" for s in ("calc", "web") for t in ("search", "calculate", "fail", "crash"))]
    offered = fake.requests[0]
    if protocol == "native":  # the tools reach the server as tools=, and the text protocol's section is not sent
        assert [t["function"]["name"] for t in offered["tools"]] == names
        assert "<tools>" not in offered["messages"][0]["content"]
    else:  # in the system prompt's tools section
        assert "tools" not in offered
        assert all(f'"name": "{n}"' in offered["messages"][0]["content"] for n in names)

    rows = {r["question"]: r for r in check_output(out)}  # every verl rule, on every row
    far, river, fails = (rows[q] for q in QUESTIONS)
    assert _tool_messages(far) == [("calc_calculate", '{\n  "value": 3.5,\n  "unit": "km"\n}')]
    assert far["num_tool_calls"] == 1 and far["tool_calls_by_name"] == [{"name": "calc_calculate", "calls": 1}]
    assert [c["arguments"] for c in calls(calc_log) if c["tool"] == "calculate"] == [
        {"operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": 2.0, "unit": ""}]}]

    [(name, seen), (_, searched)] = _tool_messages(river)
    assert name == "web_search" and seen == "[1] Paris: Paris is the capital and largest city of France.\n" \
                                             "[2] Seine: The Seine flows through Paris into the English Channel."
    assert searched.startswith("Query: river Paris")  # the built-in search, beside the MCP one
    assert river["tool_calls_by_name"] == [{"name": "web_search", "calls": 1}, {"name": "search", "calls": 1}]

    observations = _tool_messages(fails)
    assert observations[0] == ("web_fail", "Error executing tool fail: the lookup failed: no such page")  # isError
    assert observations[1][0] == "calc_calculate" and observations[1][1].startswith(
        "Error: calc_calculate cannot run with") and "is not of type 'number' (at operands[1].value)" in \
        observations[1][1]
    assert observations[2][1].startswith("Error: unknown tool 'browse'")
    assert fails["num_tool_calls"] == 1 and fails["num_tool_errors"] == 3 and "tool_error" in fails["quality_flags"]
    assert [c["tool"] for c in calls(calc_log)].count("calculate") == 1  # bad arguments never reached the server
    assert sorted(c["tool"] for c in calls(http_server.log)) == ["fail", "search"]

    # The schemas differ in shape: the rows hold the tools as the chat template shows them, in the system message.
    assert all(r["tools"] == [] for r in rows.values())
    assert all('"name": "calc_calculate"' in r["messages"][0]["content"] for r in rows.values())
    record = record_of(out)
    assert record.generation_options.tool_names() == names
    assert record.counts.tool_calls == {"calc_calculate": 1, "web_search": 1, "search": 1, "web_fail": 1}
    assert "tool calls: calc_calculate 1, " in capsys.readouterr().err
    card = build_card(*load_card_inputs(out))  # the card lists the tools, who runs them and their calls
    assert re.search(r"\| `calc_calculate` \| MCP `calc` \(\S+python\S* \S+mcp_servers.py --name calc .*\) \| 1 \| "
                     r"Adds or multiplies quantities", card)
    assert f"| `web_fail` | MCP `web` ({http_server.url}) | 1 | Always fails" in card
    assert "| `search` | retrieval server | 1 |" in card and "the rows\nhold them as the chat template shows" in card


def test_tools_chooses_what_is_offered_and_names_an_unknown_one(env: dict[str, str], tmp_path: Path,
                                                               teacher: tuple[FakeTeacher, Served],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake = teacher[0]
    _script(fake, {"How far is it in all?": [CallTool("calculate", ADD), Answer("3.5 km")]})
    inp, out = _input(tmp_path, {"How far is it in all?": 0}), tmp_path / "o.parquet"
    calc = stdio_command("calc")
    assert _generate(inp, out, "--mcp", calc, "--tools", "calculate,search") == 0
    assert [t["function"]["name"] for t in fake.requests[0]["tools"]] == ["calculate", "search"]
    [row] = check_output(out)
    assert row["tool_calls_by_name"] == [{"name": "calculate", "calls": 1}]

    assert _generate(inp, tmp_path / "o2.parquet", "--mcp", calc, "--tools", "search,calculator") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --tools names 'calculator', which no server offers; the tools are: search, calc_search, calculate, "
        "fail, crash (and open, with --corpus)")


def test_a_server_that_cannot_be_reached_stops_the_run_before_any_teacher_call(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        capsys: pytest.CaptureFixture[str]) -> None:
    down = McpHttpServer("web")  # never started
    inp = _input(tmp_path, {"How far is it in all?": 0})
    assert _generate(inp, tmp_path / "o.parquet", "--mcp-url", down.url) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith(f"error: cannot reach the MCP server '127_0_0_1_{down.port}' at {down.url}")
    assert teacher[0].chat_calls == 0 and not teacher[0].probes


def test_the_http_server_killed_mid_run_and_restarted_leaves_the_rows_exact(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served], http_server: McpHttpServer) -> None:
    fake = teacher[0]
    fake.behaviour.stable = True
    questions = {f"What does search {i} find?": [CallTool("web_search", {"query": f"Paris {i}"}),
                                                  CallTool("web_search", {"query": f"Seine {i}"}), Answer("Paris")]
                 for i in range(6)}
    _script(fake, questions)
    inp = _input(tmp_path, questions)
    # (the server's `search` has the built-in one's name: it is offered as web_search); ~10 s of retries
    run = ["--mcp-url", http_server.url, "--tools", "web_search", "--concurrency", "2", "--retry-backoff", "0.3",
           "--max-retries", "6"]
    assert _generate(inp, tmp_path / "clean.parquet", *run) == 0
    clean = pq.read_table(tmp_path / "clean.parquet").to_pylist()

    served = len(calls(http_server.log))
    killed = threading.Event()

    def kill_then_restart(body: dict[str, Any]) -> None:
        tool_results = sum(m.get("role") == "tool" for m in body["messages"])
        if tool_results == 1 and not killed.is_set():  # a conversation is about to make its second call
            killed.set()
            http_server.kill()
            threading.Timer(1.5, http_server.start).start()

    fake.on_request = kill_then_restart
    out = tmp_path / "o.parquet"
    assert _generate(inp, out, *run) == 0
    assert killed.is_set()
    assert _failures(out) == []
    rows = pq.read_table(out).to_pylist()
    assert [r["messages"] for r in rows] == [r["messages"] for r in clean]  # exact: every call was made again
    assert len(calls(http_server.log)) - served >= 12  # (one server process logged before, one after)


def test_a_server_that_stays_down_is_named_in_the_failures(env: dict[str, str], tmp_path: Path,
                                                           teacher: tuple[FakeTeacher, Served],
                                                           http_server: McpHttpServer,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake = teacher[0]
    questions = {"Where is the Seine?": [CallTool("web_search", {"query": "Seine"}), Answer("Paris")],
                 "What is two plus two?": [Answer("4")]}
    _script(fake, questions)
    fake.on_request = lambda body: http_server.kill()  # (discovery has listed its tools by then)
    out = tmp_path / "o.parquet"
    assert _generate(_input(tmp_path, questions), out, "--mcp-url", http_server.url) == 3
    [failure] = _failures(out)
    assert failure["cause"] == "mcp_web_connection" and failure["turn"] == 1
    assert f"cannot reach the MCP server 'web' at {http_server.url}" in failure["error"] and \
           "gave up after 4 attempts" in failure["error"]
    assert [r["question"] for r in pq.read_table(out).to_pylist()] == ["What is two plus two?"]
    assert "failed 1 (mcp_web_connection 1)" in capsys.readouterr().err


def test_a_stdio_server_that_crashes_is_started_again(env: dict[str, str], tmp_path: Path,
                                                      teacher: tuple[FakeTeacher, Served]) -> None:
    fake = teacher[0]
    questions = {"Does it survive?": [CallTool("crash", {}), Answer("no")],
                 "How far is it in all?": [CallTool("calculate", ADD), Answer("3.5 km")]}
    _script(fake, questions)
    log = tmp_path / "calc.calls.jsonl"
    out = tmp_path / "o.parquet"
    assert _generate(_input(tmp_path, questions), out, "--mcp", stdio_command("calc", log), "--tools",
                     "crash,calculate", "--concurrency", "1", "--max-retries", "1") == 3
    [failure] = _failures(out)  # crashing is what the tool does: every try breaks the session, then it is named
    assert failure["cause"] == "mcp_calc_connection" and failure["question"] == "Does it survive?"
    pids = {c["pid"] for c in calls(log)}
    assert len(pids) >= 3  # each try, and the next rollout's call, found the server started again
    [row] = check_output(out)
    assert row["num_tool_calls"] == 1


def test_a_conversation_killed_after_an_mcp_call_continues_from_it(env: dict[str, str], tmp_path: Path,
                                                                   teacher: tuple[FakeTeacher, Served],
                                                                   http_server: McpHttpServer) -> None:
    fake = teacher[0]
    q = "How far, then which river?"
    fake.script(q, CallTool("calculate", ADD), CallTool("web_search", {"query": "Seine"}), Answer("Seine"))
    inp, out = _input(tmp_path, {q: 0}), tmp_path / "o.parquet"
    fake.question_delay[q] = 0.5
    args = ["--input_file", str(inp), "--output_file", str(out), *FAST, "--max_assistant_turns", "5", "--mcp-url",
            http_server.url]
    proc = subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", *args], stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    deadline = time.monotonic() + 60
    while len(fake.requests) < 2 and time.monotonic() < deadline:  # the MCP turn is done, the next one asked
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    [turns] = out.parent.glob(f".hfdistill/{out.name}-*/turns.jsonl")
    assert len(turns.read_text().splitlines()) == 1  # the MCP call's turn was recorded
    served = [c["tool"] for c in calls(http_server.log)]
    assert served == ["calculate"]
    fake.question_delay[q] = 0.0
    before = len(fake.requests)
    assert _generate(inp, out, "--mcp-url", http_server.url) == 0
    resumed = fake.requests[before:]
    assert len(resumed) == 2  # the two turns left
    assert [m.get("name") or m["role"] for m in resumed[0]["messages"] if m["role"] == "tool"] == ["tool"]
    assert [c["tool"] for c in calls(http_server.log)] == ["calculate", "search"]  # not calculated again
    [row] = check_output(out)
    assert _tool_messages(row) == [("calculate", '{\n  "value": 3.5,\n  "unit": "km"\n}'),
                                   ("web_search", "[1] Seine: The Seine flows through Paris into the English Channel.")]
    assert row["tool_calls_by_name"] == [{"name": "calculate", "calls": 1}, {"name": "web_search", "calls": 1}]


def test_the_tool_set_is_part_of_the_runs_identity(env: dict[str, str], tmp_path: Path,
                                                   teacher: tuple[FakeTeacher, Served], http_server: McpHttpServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path, {"What is the capital of France?": 0}), tmp_path / "o.parquet"
    url = f"{http_server.url}?api_key=s3cret&region=eu"
    assert _generate(inp, out, "--mcp-url", url, "--mcp-header", "Authorization: Bearer s3cret") == 0
    record = record_of(out)
    [server] = {json.dumps(t["server"]) for t in record.generation_options.tools or () if "server" in t}
    assert json.loads(server) == {"name": "web", "transport": "http",
                                  "url": f"{http_server.url}?api_key=***&region=eu"}
    assert "s3cret" not in json.dumps(record.to_json())  # neither the header nor the key in the URL
    assert _generate(inp, out, "--mcp-url", url, "--tools", "search") == 2
    err = capsys.readouterr().err
    assert "already exists and was made with other options: " in err and "tools ({'name': 'search'" in err
    assert "(now None)" in err
