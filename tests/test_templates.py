"""Templates: built-ins, overrides by file name, strict variables, both observation formats."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hfdistill.core.errors import TemplateError
from hfdistill.core.prompts import Prompts
from hfdistill.core.templates import Templates
from hfdistill.core.tools import SearchTool, ToolContext, search_tool_schema
from hfdistill.core.types import Document

REPO = Path(__file__).resolve().parent.parent
DOCS = [[Document("1", "Paris", "Paris is the capital of France.", '"Paris"\nParis is the capital of France.', 9.1),
         Document("2", "France", "A country.", '"France"\nA country.', 3.2)],
        []]


def _observe(prompts: Prompts, queries: list[str]) -> str:
    async def search(_queries: object) -> list[list[Document]]:
        return DOCS

    tool = next(iter(prompts.toolset.values()))
    output = asyncio.run(tool({"query_list": queries}, ToolContext(search=search, render=prompts.render)))
    assert output.queries == len(queries)
    return output.observation


def test_seed_observation_format() -> None:
    prompts = Prompts.build(Templates(), [SearchTool()])
    text = _observe(prompts, ["capital of France", "nothing"])
    assert text == ("Query: capital of France\n[1] Paris: Paris is the capital of France.\n[2] France: A country.\n"
                    "\nQuery: nothing\n(no results)")


def test_verl_observation_format_matches_verls_search_tool() -> None:
    templates = Templates(observation="verl")
    prompts = Prompts.build(templates, [SearchTool(observation_template=templates.observation)])
    text = _observe(prompts, ["capital of France", "nothing"])
    expected = ('Doc 1 (Title: "Paris")\nParis is the capital of France.\n\nDoc 2 (Title: "France")\nA country.'
                "\n---\n")
    assert text == json.dumps({"result": expected}, ensure_ascii=False)


def test_tools_section_matches_what_the_qwen3_template_renders() -> None:
    prompts = Prompts.build(Templates(), [SearchTool()])
    tool_json = json.dumps(search_tool_schema(), ensure_ascii=False)
    assert f"<tools>\n{tool_json}\n</tools>" in prompts.tools_section
    assert prompts.system_on_wire(True) == f"{prompts.system}\n\n{prompts.tools_section}"
    assert prompts.system_on_wire(False) == prompts.system
    assert "<answer>" in prompts.system
    assert prompts.user("What?", []) == "Question: What?"


def test_override_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "user_prompt.j2").write_text("Q: {{ question }} (answers hidden: {{ golden_answers | length }})")
    prompts = Prompts.build(Templates(tmp_path), [SearchTool()])
    assert prompts.user("Why?", ["x", "y"]) == "Q: Why? (answers hidden: 2)"
    assert prompts.system.startswith("You are a deep research assistant")  # the rest stays built-in


@pytest.mark.parametrize(
    ("name", "source", "match"),
    [
        pytest.param("user_prompt.j2", "Question: {{ querstion }}", r"user_prompt\.j2 uses an unknown variable: "
                     r"'querstion' is undefined", id="unknown-variable"),
        pytest.param("system_prompt.j2", "{% if %}", r"system_prompt\.j2 line 1", id="syntax-error"),
        pytest.param("tool_observation.j2", "{{ results[0].documents[0].url }}", r"unknown variable", id="bad-field"),
        pytest.param("tool_error.j2", "{{ 1 // 0 }}", r"tool_error\.j2 failed: ZeroDivisionError", id="raises"),
    ],
)
def test_bad_templates_fail_before_any_work(tmp_path: Path, name: str, source: str, match: str) -> None:
    (tmp_path / name).write_text(source)
    with pytest.raises(TemplateError, match=match):
        Prompts.build(Templates(tmp_path), [SearchTool()])


def test_missing_template_dir() -> None:
    with pytest.raises(TemplateError, match="not a directory"):
        Templates("/nonexistent/templates")


def test_digest_changes_with_the_text(tmp_path: Path) -> None:
    before = Templates(tmp_path).digest()
    (tmp_path / "system_prompt.j2").write_text("Be brief. Answer in <answer></answer>.")
    after = Templates(tmp_path).digest()
    assert before["system_prompt.j2"] != after["system_prompt.j2"]
    assert before["user_prompt.j2"] == after["user_prompt.j2"]


def test_wheel_ships_templates_and_card(tmp_path: Path) -> None:
    """A non-editable install must render the same templates: they are inside the wheel."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("hfdistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in Templates().names:
        assert f"hfdistill/_data/templates/{template}" in names
    assert "hfdistill/_data/dataset_card.md" in names
    assert "hfdistill/_data/report.html" in names  # `hfdistill report`'s page
    # and the unpacked wheel, imported ahead of this checkout, renders from its own copy
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from hfdistill.core.templates import Templates, template_dir; from hfdistill.core.prompts import Prompts; "
            "from hfdistill.core.tools import SearchTool; "
            "p = Prompts.build(Templates(), [SearchTool()]); print(template_dir()); print(p.user('Why?', []))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where, rendered = proc.stdout.splitlines()
    assert where == str(site / "hfdistill" / "_data" / "templates")
    assert rendered == "Question: Why?"
