"""The tool set a run offers: MCP server specs and their identities (secrets masked), names prefixed only on a
collision, `--tools`, an MCP tool's schema and the model's arguments checked against it, and the missing extra."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from hfdistill.cli.main import build_parser
from hfdistill.cli.tools import tools_from_args
from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError
from hfdistill.core.tools import SearchTool, ToolArgumentError
from hfdistill.core.toolspec import McpServerSpec, ToolOptions, parse_header
from hfdistill.tools.mcp import McpServerTools, McpTool, McpToolInfo, _labels, _provisional_label, _without_nulls
from hfdistill.tools.open import OpenTool
from hfdistill.tools.toolset import offered_tools, require_mcp, toolset_identity

CALCULATE = McpToolInfo("calculate", "Adds or multiplies quantities.", {
    "type": "object", "required": ["operation", "operands"],
    "properties": {"operation": {"enum": ["add", "multiply"], "type": "string"},
                   "operands": {"type": "array", "items": {"$ref": "#/$defs/Quantity"}}},
    "$defs": {"Quantity": {"type": "object", "required": ["value"],
                           "properties": {"value": {"type": "number"}, "unit": {"type": "string"}}}}})
SEARCH = McpToolInfo("search", "Searches the web.", {"type": "object", "properties": {"query": {"type": "string"}}})


def _servers(*tools: tuple[str, tuple[McpToolInfo, ...]]) -> list[McpServerTools]:
    return [McpServerTools(McpServerSpec(command=("srv", label)), label, infos) for label, infos in tools]


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(("spec", "identity"), [
    pytest.param(McpServerSpec.stdio("npx -y server --api-key abc --region eu"),
                 {"command": ["npx", "-y", "server", "--api-key", "***", "--region", "eu"]}, id="a-key-flag"),
    pytest.param(McpServerSpec.stdio("env BRAVE_API_KEY=abc TOKEN=x node s.js"),
                 {"command": ["env", "BRAVE_API_KEY=***", "TOKEN=***", "node", "s.js"]}, id="key-assignments"),
    pytest.param(McpServerSpec(url="https://user:pw@mcp.example/mcp?token=abc&v=2",
                               headers=(("Authorization", "Bearer abc"),)),
                 {"url": "https://mcp.example/mcp?token=***&v=2"}, id="url-credentials-and-query"),
])
def test_a_servers_identity_masks_secrets(spec: McpServerSpec, identity: dict[str, Any]) -> None:
    assert spec.identity() == identity
    assert "abc" not in spec.describe() and "abc" not in repr(spec)


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({}, "a command (--mcp) or a URL (--mcp-url)", id="neither"),
    pytest.param({"command": ("x",), "url": "http://h/mcp"}, "not both or neither", id="both"),
    pytest.param({"url": "ftp://h/mcp"}, "is not an http(s) URL", id="not-http"),
    pytest.param({"command": ("x",), "headers": (("A", "b"),)}, "--mcp-header applies to --mcp-url", id="stdio-header"),
])
def test_a_bad_server_spec_is_one_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        McpServerSpec(**kwargs)


@pytest.mark.parametrize(("text", "parsed"), [
    ("Authorization: Bearer k", ("Authorization", "Bearer k")), ("X-Api-Key:k:2", ("X-Api-Key", "k:2"))])
def test_a_header_is_name_colon_value(text: str, parsed: tuple[str, str]) -> None:
    assert parse_header(text) == parsed


@pytest.mark.parametrize(("text", "problem"), [
    ("Authorization s3cret", 'the one given has no ":"'), ("Bad Name: s3cret", "'Bad Name' is not a header name"),
    ("Name:  ", "the header 'Name' has no value")])
def test_a_bad_header_says_why_without_echoing_its_value(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_header(text)
    assert str(raised.value) == f'--mcp-header must read "Name: value" (e.g. "Authorization: Bearer KEY"); {problem}'
    assert "s3cret" not in str(raised.value)


def test_the_command_line_keeps_servers_and_their_headers_in_order() -> None:
    args = build_parser().parse_args([
        "generate", "--mcp", "python a.py", "--mcp-url", "http://h:1/mcp", "--mcp-header", "A: 1",
        "--mcp-url", "http://h:2/mcp", "--mcp-header", "B: 2", "--mcp-header", "C: 3", "--tools", "search, open"])
    options = tools_from_args(args)
    assert [(s.command, s.url, s.headers) for s in options.mcp] == [
        (("python", "a.py"), None, ()), ((), "http://h:1/mcp", (("A", "1"),)),
        ((), "http://h:2/mcp", (("B", "2"), ("C", "3")))]
    assert options.offered == ("search", "open")
    with pytest.raises(ConfigError, match="--mcp-header goes after the --mcp-url"):
        tools_from_args(build_parser().parse_args(["generate", "--mcp-header", "A: 1", "--mcp-url", "http://h/mcp"]))


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"offered": ()}, "--tools needs tool names", id="no-names"),
    pytest.param({"offered": ("search", "search")}, "--tools names search more than once", id="twice"),
    pytest.param({"mcp_timeout": 0}, "--mcp-timeout must be > 0", id="timeout"),
    pytest.param({"mcp_concurrency": 0}, "--mcp-concurrency must be >= 1", id="concurrency"),
])
def test_bad_tool_options_are_one_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ToolOptions(**options)


# ---------------------------------------------------------------- the offer


def test_names_are_prefixed_only_on_a_collision() -> None:
    servers = _servers(("calc", (CALCULATE, SEARCH)), ("web", (SEARCH, McpToolInfo("fetch", "Fetches.", {}))))
    tools = offered_tools(DistillConfig(), servers)
    assert [(t.name, getattr(t, "server", None)) for t in tools] == [
        ("search", None), ("calculate", "calc"), ("calc_search", "calc"), ("web_search", "web"), ("fetch", "web")]
    assert tools[2].schema()["function"]["name"] == "calc_search"  # the server is called with its own name


def test_tools_chooses_and_orders_the_offer() -> None:
    config = DistillConfig(corpus="c.jsonl", tools=ToolOptions(offered=("calculate", "open", "search")))
    tools = offered_tools(config, _servers(("calc", (CALCULATE,))))
    assert [t.name for t in tools] == ["calculate", "open", "search"]
    assert isinstance(tools[1], OpenTool) and isinstance(tools[2], SearchTool)


def test_an_unknown_tool_names_every_tool_there_is() -> None:
    with pytest.raises(ConfigError, match=r"--tools names 'calc', which no server offers; the tools are: search, "
                                          r"calculate \(and open, with --corpus\)"):
        offered_tools(DistillConfig(tools=ToolOptions(offered=("calc",))), _servers(("calc", (CALCULATE,))))


def test_the_identity_of_search_alone_is_none_and_of_a_tool_set_names_its_servers() -> None:
    assert toolset_identity(offered_tools(DistillConfig()), []) is None
    servers = _servers(("calc", (CALCULATE,)))
    identity = toolset_identity(offered_tools(DistillConfig(), servers), servers)
    assert identity is not None and [t["name"] for t in identity] == ["search", "calculate"]
    assert identity[1]["server"] == {"name": "calc", "transport": "stdio", "command": ["srv", "calc"]}
    assert identity[1]["schema"]["function"]["parameters"] == CALCULATE.parameters


def test_labels_come_from_what_servers_call_themselves() -> None:
    assert _labels(["Brave Search", "brave-search", "", "calc"]) == ["brave_search", "brave_search_2", "mcp", "calc"]
    assert _provisional_label(McpServerSpec.stdio("python /srv/my_tools.py --x")) == "my_tools"
    assert _provisional_label(McpServerSpec.stdio("mcp-server-fetch")) == "mcp_server_fetch"
    assert _provisional_label(McpServerSpec(url="http://127.0.0.1:8931/mcp")) == "127_0_0_1_8931"


def test_a_schemas_null_values_are_dropped() -> None:
    assert _without_nulls({"a": None, "b": [{"c": None, "d": 1}], "e": {"default": None}}) == {
        "b": [{"d": 1}], "e": {}}


# ---------------------------------------------------------------- an MCP tool's arguments


@pytest.mark.parametrize(("raw", "error"), [
    pytest.param({"operation": "add", "operands": [{"value": 1}, {"value": 2.5, "unit": "km"}]}, None, id="valid"),
    pytest.param({"operation": "divide", "operands": []}, "'divide' is not one of ['add', 'multiply'] (at operation)",
                 id="enum"),
    pytest.param({"operation": "add"}, "'operands' is a required property", id="required"),
    pytest.param({"operation": "add", "operands": [{"value": "one"}]}, "'one' is not of type 'number' "
                                                                       "(at operands[0].value)", id="nested-ref"),
])
def test_an_mcp_tools_arguments_are_checked_against_its_schema(raw: dict[str, Any], error: str | None) -> None:
    tool = McpTool("calculate", "calc", CALCULATE)
    if error is None:
        assert tool.arguments(raw) == raw
        return
    with pytest.raises(ToolArgumentError) as raised:
        tool.arguments(raw)
    assert str(raised.value).startswith("calculate cannot run with {") and str(raised.value).endswith(error)


def test_several_calls_of_an_mcp_tool_in_one_turn_run_the_first() -> None:
    assert McpTool("search", "web", SEARCH).fold([{"query": "a"}, {"query": "b"}]) == {"query": "a"}


def test_a_schema_that_is_not_json_schema_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="the tool 'odd' of MCP server 'web' has an input schema that is not JSON"):
        McpTool("odd", "web", McpToolInfo("odd", "", {"type": 12}))


def test_without_the_mcp_extra_one_line_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_mcp(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "mcp":
            raise ModuleNotFoundError("No module named 'mcp'", name="mcp")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mcp)
    with pytest.raises(ConfigError) as raised:
        require_mcp()
    assert str(raised.value) == ('--mcp / --mcp-url need the MCP SDK (mcp is not installed): '
                                 'pip install "hfdistill[mcp]"')
