"""`hfdistill report`: a page made from a real output file, opened in a real headless browser.

The output comes from the scripted teacher (every stop reason, right and wrong answers); the page
is opened from file:// in Debian's chromium driven by Playwright. The screenshot is kept in
$HFDISTILL_TEST_ARTIFACTS (else the test's tmp_path) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.core.errors import InputError
from hfdistill.publish.report import DEFAULT_MAX_ROWS, build_report, write_report
from tests.conftest import write_jsonl
from tests.fakes import Answer, FakeTeacher, Raw, Say, Search, Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SCRIPTS = {
    "Which city is the capital of France?": (Search(["capital of France"]), Answer("Paris")),
    "Which city is the capital of Germany?": (Search(["capital of Germany"]), Answer("Munich")),  # wrong
    "Who wrote <b>Hamlet</b> & why?": (Answer("Shakespeare"),),  # markup in data stays text
    "What keeps searching?": (Search(["a"]), Search(["b"]), Search(["c"])),  # max_turns
    "What is never answered?": (Say("I cannot tell."),),  # no_tool_call
    "Which river flows through Paris?": (Raw("<tool_call>\n{search: seine}\n</tool_call>"), Answer("Seine")),
}
GOLDEN = {"Which city is the capital of France?": ["Paris"], "Which city is the capital of Germany?": ["Berlin"],
          "Who wrote <b>Hamlet</b> & why?": ["Shakespeare"], "Which river flows through Paris?": ["Seine"]}


@pytest.fixture
def distilled(env: dict[str, str], teacher: tuple[FakeTeacher, Served], tmp_path: Path) -> Path:
    for question, steps in SCRIPTS.items():
        teacher[0].script(question, *steps)
    rows = [{"question": q, "golden_answers": GOLDEN.get(q, [])} for q in SCRIPTS]
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    out = tmp_path / "questions_distilled.parquet"
    assert main(["generate", "-q", "--input_file", str(source), "--output_file", str(out), "--num-rollouts", "2",
                 "--keep-malformed"]) == 0  # the flagged rows too
    return out


def _embedded(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert block is not None
    return json.loads(block.group(1))


def test_the_page_is_self_contained_and_counts_every_row(distilled: Path) -> None:
    page = build_report(distilled, max_rows=4, seed=1)
    html = page.html
    table = pq.read_table(distilled)
    assert page.rows == table.num_rows == 12 and page.sampled == 4
    data = _embedded(html)
    assert len(data["samples"]) == 4 and data["rows"] == 12
    assert dict(data["summary"]["stop_reasons"]) == dict(Counter(table.column("stop_reason").to_pylist()))
    assert data["summary"]["scored"] == 8 and data["summary"]["correct"] == 6
    # the call that was not even JSON (also a tool_error), replies without an answer, searches that found nothing
    assert dict(data["summary"]["flags"]) == {"malformed_call": 2, "tool_error": 2, "no_answer": 4,
                                              "empty_observation": 2}
    assert dict(data["summary"]["flags"]) == dict(Counter(f for fs in table.column("quality_flags").to_pylist()
                                                          for f in fs))
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|https?://(?!www\.w3\.org/2000/svg)", html)  # no fetches
    assert "<b>Hamlet</b>" not in html  # data is escaped inside the JSON block
    assert build_report(distilled, max_rows=4, seed=1).html == html  # the sample is seeded


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda p: p / "missing.parquet", "does not exist", id="missing"),
    pytest.param(lambda p: (p / "x.parquet").write_text("nope") and p / "x.parquet", "cannot read", id="not-parquet"),
])
def test_a_bad_file_is_an_input_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        write_report(make(tmp_path), tmp_path / "r.html")


def test_the_help_states_the_default_sample_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert f"(default {DEFAULT_MAX_ROWS})" in " ".join(capsys.readouterr().out.split())


def test_the_command_writes_next_to_the_input_by_default(distilled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(distilled)]) == 0
    assert distilled.with_suffix(".report.html").is_file()
    assert "charts over 12 rows, all 12 conversations in the list" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); "
                                              ".ci/run installs it")
def test_the_page_in_a_headless_browser(distilled: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright is not installed")
    page_path = write_report(distilled, tmp_path / "report.html").path
    sampled_path = write_report(distilled, tmp_path / "sampled.html", max_rows=4).path
    many = tmp_path / "many.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(distilled)] * 12), many)  # 144 rows: pages of 50, 50, 44
    paged_path = write_report(many, tmp_path / "paged.html").path
    stop_reasons = Counter(pq.read_table(distilled).column("stop_reason").to_pylist())
    artifacts = Path(os.environ.get("HFDISTILL_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    fetched: list[str] = []
    with sync_api.sync_playwright() as p:
        # A fresh profile per test (Playwright passes it as --user-data-dir); never `playwright install`.
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       args=LAUNCH_FLAGS, headless=True,
                                                       viewport={"width": 1300, "height": 1000})
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_path.resolve().as_uri())
            expect, count_of = sync_api.expect, page.locator("#match-count")
            charts = page.locator(".chart")
            expect(charts).to_have_count(8)  # with the quality flags and the pass rates
            expect(page.locator("#record")).to_contain_text("Tongyi-DeepResearch")  # the generation record
            for i in range(charts.count()):  # every chart has drawn bars
                assert charts.nth(i).locator("svg rect.bar").count() > 0, charts.nth(i).inner_text()
            expect(count_of).to_have_text("12 conversations")
            for reason, count in stop_reasons.items():
                page.select_option("#f-stop", reason)
                expect(count_of).to_have_text(f"{count} conversation{'s' * (count != 1)}")
                expect(page.locator("details.conv")).to_have_count(count)
                expect(page.locator(f"details.conv[data-stop='{reason}']")).to_have_count(count)
            page.click(".chart rect[data-pick='no_tool_call']")  # a bar of the stop reasons chart filters too
            expect(page.locator("#f-stop")).to_have_value("no_tool_call")
            expect(count_of).to_have_text(f"{stop_reasons['no_tool_call']} conversations")
            page.select_option("#f-stop", "")
            page.select_option("#f-correct", "wrong")
            expect(page.locator("details.conv")).to_have_count(2)  # Munich, twice
            page.select_option("#f-correct", "")
            page.select_option("#f-flag", "malformed_call")
            expect(count_of).to_have_text("2 conversations")
            expect(page.locator("details.conv .q").first).to_have_text("Which river flows through Paris?")
            page.select_option("#f-flag", "")
            page.fill("#f-search", "hamlet")
            expect(page.locator("details.conv")).to_have_count(2)
            expect(page.locator("details.conv .q").first).to_have_text("Who wrote <b>Hamlet</b> & why?")
            page.fill("#f-search", "France")
            expect(count_of).to_have_text("2 conversations")
            conv = page.locator("details.conv").first
            conv.locator("summary").click()
            think = conv.locator("details.think").first  # built when the conversation opens
            expect(think).to_be_attached()
            assert not think.evaluate("d => d.open")  # thinking starts collapsed
            expect(conv.locator(".call").first).to_contain_text("search(")
            expect(conv.locator(".msg.tool").first).to_contain_text("Paris")
            expect(conv.locator(".scores")).to_contain_text("exact match true")
            page.fill("#f-search", "")
            expect(count_of).to_have_text("12 conversations")
            page.locator("details.conv summary").first.click()  # one conversation open in the picture
            page.locator("details.conv details.think summary").first.click()
            expect(page.locator("details.conv details.think").first).to_have_attribute("open", "")
            shot = artifacts / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            page.goto(sampled_path.resolve().as_uri())  # a sample: the page says so, the charts count all
            expect(page.locator("#note")).to_contain_text("The list holds a random sample of 4")
            expect(count_of).to_have_text("4 conversations")
            expect(page.locator(".stat b").first).to_have_text("12")
            page.goto(paged_path.resolve().as_uri())
            expect(page.locator("#page")).to_have_text(" page 1 of 3 ")
            expect(page.locator("details.conv")).to_have_count(50)
            page.click("#next")
            page.click("#next")
            expect(page.locator("#page")).to_have_text(" page 3 of 3 ")
            expect(page.locator("details.conv")).to_have_count(44)
            expect(page.locator("#next")).to_be_disabled()
        finally:
            browser.close()
    assert errors == []
    assert fetched == []
    assert shot.stat().st_size > 10_000

