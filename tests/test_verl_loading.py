"""verl 0.9.1 must load our output parquet as is (docs/verl.md).

The slow tests build (once, cached) a separate CPU-only verl venv and run `verl_load.py` in it. They never
skip: when the venv cannot be built, the fixture raises with pip's error, because CI must notice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from tests import verl_env, verl_load
from tests.fakes import Answer, CallTool, Cut, FakeRetriever, FakeTeacher, Raw, Say, Search, Served
from tests.verl_rules import check_output

HERE = Path(__file__).resolve().parent
VERL_TIMEOUT = 1800  # a cold venv build downloads ~1.7 GB; pyproject's 300 s default is for normal tests

SYSTEM_PROMPT = (
    "You are a research assistant. Use the search tool to look things up, think step by step, and give "
    "the final answer inside <answer></answer> tags."
)
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches the web for relevant information based on the given query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "A list of fully-formed semantic queries. "
                    "The tool will return search results for each query.",
                }
            },
            "required": ["query_list"],
        },
    },
}

# The output schema, spelled out so the fixture does not depend on type inference.
TOOL_CALL_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("reasoning_content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
TOOL_TYPE = pa.struct(
    [
        ("type", pa.string()),
        (
            "function",
            pa.struct(
                [
                    ("name", pa.string()),
                    ("description", pa.string()),
                    (
                        "parameters",
                        pa.struct(
                            [
                                ("type", pa.string()),
                                (
                                    "properties",
                                    pa.struct(
                                        [
                                            (
                                                "query_list",
                                                pa.struct(
                                                    [
                                                        ("type", pa.string()),
                                                        ("items", pa.struct([("type", pa.string())])),
                                                        ("description", pa.string()),
                                                    ]
                                                ),
                                            )
                                        ]
                                    ),
                                ),
                                ("required", pa.list_(pa.string())),
                            ]
                        ),
                    ),
                ]
            ),
        ),
    ]
)
OUTPUT_SCHEMA = pa.schema(
    [
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("tools", pa.list_(TOOL_TYPE)),
        ("question", pa.string()),
        ("stop_reason", pa.string()),
        ("assistant_turns", pa.int64()),
    ]
)


# ------------------------------------------------------------------------------------------------------
# Handcrafted rows in the output schema: the base of the rows that break the rules on purpose.
# ------------------------------------------------------------------------------------------------------


def _message(role: str, content: str, **extra: Any) -> dict[str, Any]:
    # Every key on every message: one struct type for the column, nulls where not applicable.
    base = {"role": role, "content": content, "reasoning_content": None, "tool_calls": None}
    return {**base, "tool_call_id": None, "name": None, **extra}


def _search_turn(n: int, query: str, observation: str, thought: str, text: str) -> list[dict[str, Any]]:
    call_id = f"call_{n}"
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "search", "arguments": json.dumps({"query_list": [query]})},
    }
    return [
        _message("assistant", text, reasoning_content=thought, tool_calls=[call]),
        _message("tool", f"Query: {query}\n{observation}", tool_call_id=call_id, name="search"),
    ]


def _row(question: str, turns: list[tuple[str, str, str, str]], final_thought: str) -> dict[str, Any]:
    messages = [_message("system", SYSTEM_PROMPT), _message("user", f"Question: {question}")]
    for n, (query, observation, thought, text) in enumerate(turns):
        messages += _search_turn(n, query, observation, thought, text)
    messages.append(_message("assistant", "<answer>Paris</answer>", reasoning_content=final_thought))
    return {
        "messages": messages,
        "tools": [SEARCH_TOOL],
        "question": question,
        "stop_reason": "answer",
        "assistant_turns": len(turns) + 1,
    }


def fixture_rows() -> list[dict[str, Any]]:
    paris = "[1] Paris: Paris is the capital and largest city of France.\n[2] France: Its capital is Paris."
    return [
        _row("What is the capital of France?", [], "I know this: the capital of France is Paris."),
        _row(
            "Which city is the capital of France?",
            [("capital of France", paris, "I should verify with a search.", "Let me search for that.")],
            "The results say Paris.",
        ),
        _row(
            "In which city does the French president have his official residence?",
            [
                (
                    "French president official residence",
                    "[1] Élysée Palace: the official residence of the President of France, in Paris.",
                    "Where does the president live?",
                    "Searching.",
                ),
                # A legitimate "None" in the data: the null check must not count it as a leak.
                (
                    "Élysée Palace city",
                    "[1] None of the sources disagree: the Élysée is in Paris.",
                    "Which city is the Élysée in?",
                    "One more search.",
                ),
                (
                    "Paris arrondissement Élysée",
                    "[1] 8th arrondissement: home of the Élysée Palace.",
                    "Double-check the district.",
                    "Checking the district.",
                ),
            ],
            "All three searches point to Paris.",
        ),
        _row(  # tool turns with empty content: the call is the whole visible turn
            "What is the largest city of France?",
            [
                ("largest city of France", paris, "Search first.", ""),
                ("population of Paris", "[1] Paris: about 2.1 million inhabitants.", "Confirm size.", ""),
            ],
            "Paris is the largest city.",
        ),
    ]


def build_fixture_parquet(path: Path) -> Path:
    """Write the fixture rows in the generator's exact output schema."""
    pq.write_table(pa.Table.from_pylist(fixture_rows(), schema=OUTPUT_SCHEMA), path)
    return path


# ------------------------------------------------------------------------------------------------------
# Running verl
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def verl_python() -> Path:
    # Raises (test error, not skip) with pip's output when the venv cannot be built.
    return verl_env.ensure_verl_venv()


def run_verl_load(python: Path, parquet: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), str(HERE / "verl_load.py"), str(parquet), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=VERL_TIMEOUT,
        check=False,
    )
    sys.stderr.write(proc.stderr[-20000:])  # shown by pytest on failure
    assert proc.returncode == 0, f"verl_load.py exited {proc.returncode}:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout)


def failures(config: dict[str, Any]) -> list[str]:
    out = [config["error"]] if config.get("error") else []
    for r in config.get("row_reports", []):
        out += [f"row {r['row']}: {r['error']}"] if r["error"] else []
        out += [f"row {r['row']}: {p}" for p in r["problems"]]
    return out


# What the generated file holds, question by question: the script the fake teacher follows and the
# number of tool calls stored for it. Every kind of row hfdistill writes is here.
GENERATED = [
    ("What is the capital of France?", [Answer("Paris")], 0),
    ("Which city is the capital of France?", [Search(["capital of France"], say="Let me search."),
                                              Answer("Paris")], 1),
    ("Where does the French president live?", [Search(["French president residence"]), Search(["Elysee Palace"]),
                                               Search(["Elysee Palace city"], key="query"), Answer("Paris")], 3),
    ("What is the largest city of France?", [Raw('<tool_call>{"name": "search", "arguments": {"query_list": ['
                                                 '"largest city"</tool_call>'), Search(["largest city of France"]),
                                             Answer("Paris")], 1),
    ("Which river flows through Paris?", [CallTool("browse", {"url": "https://fr.wikipedia.org"}),
                                          CallTool("search", {"query_list": []}), Search(["river Paris"]),
                                          Answer("Seine")], 3),
    ("What is the population of Paris?", [Search(["population of Paris"]), Cut()], 1),
    ("Is Paris nice?", [Say("It depends on whom you ask.")], 0),
]


def generate_parquet(path: Path) -> Path:
    """Run `hfdistill generate` against the scripted teacher: the file verl must load is a real output."""
    teacher, retriever = FakeTeacher(), FakeRetriever()
    for question, steps, _ in GENERATED:
        teacher.script(question, *steps)
    servers = [Served(teacher.app()), Served(retriever.app())]
    inp = path.with_name("questions.jsonl")
    inp.write_text("".join(json.dumps({"question": q, "golden_answers": ["Paris"]}) + "\n" for q, _, _ in GENERATED))
    try:
        rc = main(["generate", "--vllm_url", f"{servers[0].url}/v1", "--retrieval_url",
                   f"{servers[1].url}/retrieve", "--input_file", str(inp), "--output_file", str(path),
                   "--max_assistant_turns", "5", "--keep-malformed", "-q"])
    finally:
        for served in servers:
            served.close()
    assert rc == 0
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_parquet(tmp_path_factory.mktemp("generated") / "distilled.parquet")


@pytest.fixture(scope="module")
def fixture_report(verl_python: Path, generated: Path) -> dict[str, Any]:
    configs = [arg for name in ("toy", "qwen", "qwen_custom") for arg in ("--config", name)]
    return run_verl_load(verl_python, generated, *configs)


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_strict_toy_template_loads_every_row(fixture_report: dict[str, Any]) -> None:
    toy = fixture_report["configs"]["toy"]
    assert "data.ignore_input_ids_mismatch=true" not in toy["overrides"]
    assert failures(toy) == []
    assert toy["loaded"] == toy["rows"] == len(GENERATED)
    reports = toy["row_reports"]
    assert all(r["strict_match"] for r in reports)
    assert [r["tool_calls"] for r in reports] == [n for _, _, n in GENERATED]
    # A template that renders <think> per message trains the reasoning of every turn.
    assert all(state == "trained" for r in reports for state in r["reasoning"])
    assert all(r["null_literals"] == r["legit_null_literals"] for r in reports)
    assert toy["ok"]


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_real_qwen3_template_loads_every_row(fixture_report: dict[str, Any]) -> None:
    qwen = fixture_report["configs"]["qwen"]
    assert "data.ignore_input_ids_mismatch=true" in qwen["overrides"]
    assert failures(qwen) == []
    assert qwen["loaded"] == qwen["rows"] == len(GENERATED)
    reports = qwen["row_reports"]
    assert [r["tool_calls"] for r in reports] == [n for _, _, n in GENERATED]
    # Why the override is needed: Qwen3 renders <think> by position, so per-message != whole for rows
    # with reasoning, and verl keeps the per-message ids, in which no reasoning survives.
    assert not any(r["strict_match"] for r in reports)
    assert all(state == "absent" for r in reports for state in r["reasoning"])
    assert qwen["ok"]


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_qwen3_tokenizer_with_per_message_template_is_strict(fixture_report: dict[str, Any]) -> None:
    # docs/verl.md's fix for lost thinking: model.custom_chat_template with a per-message-stable template.
    custom = fixture_report["configs"]["qwen_custom"]
    assert "data.ignore_input_ids_mismatch=true" not in custom["overrides"]
    assert failures(custom) == []
    assert custom["loaded"] == custom["rows"] == len(GENERATED)
    assert all(r["strict_match"] for r in custom["row_reports"])
    assert all(state == "trained" for r in custom["row_reports"] for state in r["reasoning"])
    assert custom["ok"]


def _bad_rows() -> list[dict[str, Any]]:
    """Rows breaking docs/verl.md the way a naive writer would: the harness must flag each one."""
    rows = [fixture_rows()[1] for _ in range(4)]
    # Row 0 has an extra schema key; parquet unions the structs, so row 1 gains `"strict": null`.
    rows[0]["tools"] = [{**SEARCH_TOOL, "function": {**SEARCH_TOOL["function"], "strict": True}}]
    # Row 2: two tool messages after one call (Qwen-style templates merge them: per-message != whole).
    msgs = rows[2]["messages"]
    rows[2]["messages"] = [*msgs[:4], msgs[3], *msgs[4:]]
    # Row 3: null assistant content on the tool turn.
    rows[3]["messages"] = [{**m, "content": None} if m["tool_calls"] else m for m in rows[3]["messages"]]
    return rows


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_harness_flags_null_leaks_and_merged_tool_turns(verl_python: Path, tmp_path: Path) -> None:
    parquet = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(_bad_rows()), parquet)  # inferred schema, as a naive writer gets
    report = run_verl_load(verl_python, parquet, "--config", "toy")
    assert not report["ok"]
    rows = report["configs"]["toy"]["row_reports"]
    assert rows[0]["problems"] == []
    assert rows[0]["error"] is None
    assert any("null/None literals" in p for p in rows[1]["problems"])  # `"strict": null` in its tools
    assert "AssertionError" in (rows[2]["error"] or "")  # verl's strict sanity check
    assert any("null/None literals" in p for p in rows[3]["problems"])  # content None rendered


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_legacy_multiturn_keys_are_rejected(verl_python: Path, generated: Path) -> None:
    # verl 0.9.1 reads data.messages_key / data.tools_key; the older data.multiturn.* keys do not exist.
    report = run_verl_load(verl_python, generated, "--config", "toy", "--override", "data.multiturn.enable=true")
    toy = report["configs"]["toy"]
    assert not toy["ok"]
    assert "multiturn" in toy["error"]


# ------------------------------------------------------------------------------------------------------
# Rows with several tools: search, open and an MCP server's (schemas of different shapes)
# ------------------------------------------------------------------------------------------------------

ADD = {"operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": 2}]}
TOOL_ROWS = [
    ("How far is it in all?", [CallTool("calculate", ADD), Answer("3.5 km")], 1),
    ("Which river flows through Paris?", [CallTool("calc_search", {"query": "Seine"}), Search(["river Paris"]),
                                          CallTool("open", {"document": "Seine"}), Answer("Seine")], 3),
    ("Can the lookup fail?", [CallTool("fail", {"reason": "none"}), CallTool("calculate", {"operation": "x"}),
                              Answer("no")], 1),
]


def generate_with_tools(path: Path) -> Path:
    """`hfdistill generate` offering search, open and a real MCP server's tools (tests/mcp_servers.py, stdio)."""
    from tests.corpus_util import write_jsonl
    from tests.mcp_servers import stdio_command

    teacher = FakeTeacher()
    for question, steps, _ in TOOL_ROWS:
        teacher.script(question, *steps)
    corpus = write_jsonl(path.with_name("corpus.jsonl"), [
        {"id": "1", "contents": '"Seine"\nThe Seine flows through Paris.'},
        {"id": "2", "contents": '"Seine"\nIt ends in the English Channel.'}])
    inp = path.with_name("tool_questions.jsonl")
    inp.write_text("".join(json.dumps({"question": q, "golden_answers": ["x"]}) + "\n" for q, _, _ in TOOL_ROWS))
    served = Served(teacher.app())
    try:
        rc = main(["generate", "--vllm_url", f"{served.url}/v1", "--corpus", str(corpus), "--input_file", str(inp),
                   "--output_file", str(path), "--mcp", stdio_command("calc"), "--tools",
                   "search,open,calculate,calc_search,fail", "--max_assistant_turns", "5", "-q"])
    finally:
        served.close()
    assert rc == 0
    return path


@pytest.fixture(scope="module")
def with_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_with_tools(tmp_path_factory.mktemp("tools") / "distilled.parquet")


@pytest.fixture(scope="module")
def tools_report(verl_python: Path, with_tools: Path) -> dict[str, Any]:
    return run_verl_load(verl_python, with_tools, *[a for n in ("toy", "qwen", "qwen_custom") for a in ("--config", n)])


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
@pytest.mark.parametrize("config", ["toy", "qwen", "qwen_custom"])
def test_rows_with_several_tools_load_in_every_configuration(tools_report: dict[str, Any], config: str) -> None:
    report = tools_report["configs"][config]
    assert failures(report) == []  # no null literal, every call trained, nothing else trained
    assert report["loaded"] == report["rows"] == len(TOOL_ROWS)
    assert [r["tool_calls"] for r in report["row_reports"]] == [n + e for (_, _, n), e in zip(TOOL_ROWS, (0, 0, 1),
                                                                                               strict=True)]
    assert report["ok"]


def test_rows_with_several_tools_carry_them_in_the_system_message(with_tools: Path) -> None:
    rows = check_output(with_tools)
    assert all(r["tools"] == [] for r in rows)
    system = rows[0]["messages"][0]["content"]
    assert system.endswith("</tool_call>") and all(f'"name": "{n}"' in system
                                                    for n in ("search", "open", "calculate", "calc_search", "fail"))
    assert [r["num_tool_calls"] for r in rows] == [n for _, _, n in TOOL_ROWS]


def test_the_system_message_is_what_qwen3_renders_from_the_tools(with_tools: Path) -> None:
    # Stored in the system message, the tools reach the student exactly as Qwen3's template shows `tools=`.
    from transformers import AutoTokenizer

    from hfdistill.core.config import DistillConfig
    from hfdistill.core.toolspec import McpServerSpec, ToolOptions
    from hfdistill.engines.distiller import Distiller
    from tests.mcp_servers import stdio_command

    tokenizer = AutoTokenizer.from_pretrained(str(verl_load.qwen_tokenizer_dir()), local_files_only=True)
    config = DistillConfig(corpus=str(with_tools.with_name("corpus.jsonl")), tools=ToolOptions(
        mcp=(McpServerSpec.stdio(stdio_command("calc")),), offered=("search", "open", "calculate", "calc_search",
                                                                     "fail")))
    prompts = Distiller(config).prompts
    rows = pq.read_table(with_tools).to_pylist()
    user = rows[0]["messages"][1]
    stored = tokenizer.apply_chat_template([rows[0]["messages"][0], user], tokenize=False)
    offered = tokenizer.apply_chat_template([{"role": "system", "content": prompts.plain_system}, user],
                                            tools=prompts.tools, tokenize=False)
    assert stored == offered


# ------------------------------------------------------------------------------------------------------
# Fast tests of the pure pieces
# ------------------------------------------------------------------------------------------------------


def test_generated_file_has_the_schema_the_handcrafted_rows_use(generated: Path) -> None:
    schema = pq.read_schema(generated)
    assert schema.field("messages").type == pa.list_(MESSAGE_TYPE)
    assert schema.field("tools").type == pa.list_(TOOL_TYPE)
    rows = pq.read_table(generated).to_pylist()
    assert [r["stop_reason"] for r in rows] == ["answer"] * 5 + ["length", "no_tool_call"]
    assert [r["num_tool_errors"] for r in rows] == [0, 0, 0, 1, 2, 0, 0]


def test_fixture_has_the_output_schema(tmp_path: Path) -> None:
    table = pq.read_table(build_fixture_parquet(tmp_path / "f.parquet"))
    assert table.schema.equals(OUTPUT_SCHEMA)
    rows = table.to_pylist()
    assert all(r["tools"] == [SEARCH_TOOL] for r in rows)
    for row in rows:
        msgs = row["messages"]
        assert [m["role"] for m in msgs[:2]] == ["system", "user"]
        assert msgs[-1]["content"] == "<answer>Paris</answer>"
        assert msgs[-1]["tool_calls"] is None
        for call_msg, tool_msg in zip(msgs[2:-1:2], msgs[3:-1:2], strict=True):
            assert call_msg["content"] is not None
            assert len(call_msg["tool_calls"]) == 1
            assert tool_msg["tool_call_id"] == call_msg["tool_calls"][0]["id"]
            assert json.loads(call_msg["tool_calls"][0]["function"]["arguments"])["query_list"]


def test_null_literals_are_counted_against_the_data() -> None:
    row = {"messages": [{"content": "None of them", "tool_calls": None}], "tools": [{"strict": None}]}
    assert verl_load.legit_null_literals(row, ["messages", "tools"]) == 1
    assert verl_load.count_null_literals('None of them {"strict": null} nullable Nonesuch') == 2


def test_mask_helpers_locate_trained_tool_calls() -> None:
    args = '{"query_list": ["capital of France"]}'
    segments = [
        ("<|im_start|>assistant\n", False),
        (f'<tool_call>\n{{"name": "search", "arguments": {args}}}\n</tool_call><|im_end|>\n', True),
        ("<|im_start|>user\n<tool_response>\nQuery: capital of France\n</tool_response>", False),
    ]
    text, mask = verl_load.char_mask(segments)
    assert len(mask) == len(text)
    assert verl_load.tool_call_trained(text, mask, args)
    assert verl_load.needle_states(text, mask, "Query: capital of France") == ["untrained"]
    assert verl_load.needle_states(text, mask, "assistant\n<tool_call>") == ["partial"]
    assert not verl_load.tool_call_trained(text, [False] * len(text), args)


def test_check_row_reports_untrained_call_and_trained_tool_response() -> None:
    args = '{"query_list": ["q"]}'
    raw = {
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "search", "arguments": args}}],
            },
            {"role": "tool", "content": "Query: q"},
        ],
        "tools": [],
    }
    text = f"<tool_call>{args}</tool_call>Query: q"
    report = verl_load.RowReport(row=0)
    verl_load.check_row(raw, text, [True] * len(text), report, ["messages", "tools"])
    assert report.tool_calls == 1
    assert report.problems == ["tool content 'Query: q' is inside the loss mask"]


def test_verl_env_reuses_only_a_complete_matching_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert not verl_env._is_complete(venv)  # no marker: a killed build
    marker = venv / verl_env.MARKER_NAME
    marker.write_text(json.dumps(verl_env.marker_payload()))
    assert verl_env._is_complete(venv)
    marker.write_text(json.dumps({**verl_env.marker_payload(), "steps": []}))
    assert not verl_env._is_complete(venv)  # another package set


def test_verl_env_build_failure_is_loud_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline (--no-index): a package pip cannot find must surface pip's own error, and no venv must remain.
    monkeypatch.setattr(verl_env, "INSTALL_STEPS", ((("--no-index",), ("hfdistill-no-such-package==1",)),))
    venv = tmp_path / "verl-venv"
    with pytest.raises(RuntimeError, match="No matching distribution found for hfdistill-no-such-package"):
        verl_env.ensure_verl_venv(venv)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".verl-venv.lock"]
