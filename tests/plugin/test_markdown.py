"""The markdown summary (``markdown_report``): verdict, totals, gates, the changes table, escaping, size limit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.errors import ErrorKind
from pytest_llmsim.model.results import ModelUsage, Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.reporting.baseline import ScenarioDelta
from pytest_llmsim.reporting.markdown import (
    append_step_summary,
    fenced,
    md_text,
    render_markdown,
    write_markdown,
)
from pytest_llmsim.reporting.summary import Gates, missed_gates, outcome_counts, summarize

HOSTILE = ("<script>alert(1)</script> <img src=x onerror=alert(2)> a | b ``` ```` \n</details>\n\n"
           "# heading [link](http://evil) *em* &amp; <!-- \n```\n</summary> $x$")
ALLOWED_TAGS = {"details", "/details", "summary", "/summary", "code", "/code"}

TRANSCRIPT = [
    {"role": "client", "text": "Hi, I want to order."},
    {"role": "agent", "text": "Sure, what would you like?"},
    {"role": "client", "text": "Two pizzas."},
    {"role": "agent", "text": "Done.", "tool_calls": [{"name": "order", "arguments": {"n": 2}, "result": "ok"}]},
]


def _turns(count: int, filler: str = "") -> list[dict[str, Any]]:
    return [{"role": "client" if n % 2 == 0 else "agent", "text": f"turn {n} {filler}"} for n in range(count)]


def _record(name: str, outcome: str = "passed", score: int | None = 3, *, transcript: list[dict[str, Any]] | None
            = None, comment: str = "fine", error: str = "", cost: float = 0.0) -> ScenarioRecord:
    status = {"passed": Status.PASSED, "failed": Status.FAILED, "error": Status.ERROR, "skipped": Status.SKIPPED,
              "xfailed": Status.FAILED}[outcome]
    usage = ModelUsage("agent", "gpt-4o-mini")
    usage.add(100, 20, cached=False)
    result = ScenarioResult(name, f"suite.yaml::{name}", "suite.yaml", status, 2, score=score, comment=comment,
                            transcript=list(TRANSCRIPT if transcript is None else transcript), ended_by="client",
                            end_reason="done", usage=[usage], error_message=error,
                            error_kind=ErrorKind.AGENT if outcome == "error" else None)
    return ScenarioRecord(result=result, outcome=Outcome(outcome), run_id="run", cost_usd=cost)


def _delta(name: str, old_status: str | None, new_status: str, old_score: int | None, new_score: int | None, *,
           old: list[dict[str, Any]] | None = None, new: list[dict[str, Any]] | None = None,
           nodeid: str | None = None, **extra: Any) -> ScenarioDelta:
    old_t = list(TRANSCRIPT if old is None else old) if old_status is not None else []
    new_t = list(TRANSCRIPT if new is None else new)
    both = old_score is not None and new_score is not None
    values: dict[str, Any] = dict(
        nodeid=nodeid or f"suite.yaml::{name}", scenario=name, old_status=old_status, new_status=new_status,
        old_score=old_score, new_score=new_score, score_delta=new_score - old_score if both else None,
        newly_failing=old_status == "passed" and new_status in ("failed", "error"),
        newly_passing=old_status in ("failed", "error") and new_status == "passed",
        turns_delta=len(new_t) - len(old_t) if old_status is not None else None,
        tokens_delta=0 if old_status is not None else None, cost_delta_usd=0.0 if old_status is not None else None,
        transcript_changed=old_t != new_t, old_transcript=old_t, new_transcript=new_t, old_comment="was fine",
        new_comment="now bad")
    values.update(extra)
    return ScenarioDelta(**values)


NO_GATES = Gates()


def _render(records: list[ScenarioRecord], gates: Gates = NO_GATES, deltas: list[ScenarioDelta] | None = None,
            **kwargs: Any) -> str:
    summary = summarize(records)
    return render_markdown(summary, gates, missed_gates(summary, gates), records, deltas, **kwargs)


def _outside_fences(text: str) -> tuple[list[str], list[str]]:
    """The lines outside fenced code blocks and the contents of the blocks, by CommonMark's fence rules (a
    backtick fence closes only on a line of at least as many backticks and nothing else)."""
    outside: list[str] = []
    blocks: list[str] = []
    fence = 0
    current: list[str] = []
    for line in text.split("\n"):
        if fence:
            if re.fullmatch(rf"`{{{fence},}}\s*", line):
                blocks.append("\n".join(current))
                fence, current = 0, []
            else:
                current.append(line)
            continue
        opening = re.match(r"(`{3,})[^`]*$", line)
        if opening:
            fence = len(opening.group(1))
            continue
        outside.append(line)
    assert not fence, "a code block was left open"
    return outside, blocks


def _tags(lines: list[str]) -> set[str]:
    return {m.group(1).lower() for line in lines for m in re.finditer(r"<(/?[A-Za-z!][A-Za-z0-9-]*)", line)}


def _table_rows(text: str) -> list[list[str]]:
    """The changes table's body rows, split on unescaped pipes."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| Scenario |")) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


# -- title, totals, gates ------------------------------------------------------------------------------------
def test_title_says_all_passed_and_the_totals_use_the_shared_wording() -> None:
    records = [_record("a", cost=0.0012), _record("b", cost=0.0003), _record("c", "skipped", None)]
    text = _render(records)
    summary = summarize(records)
    assert text.splitlines()[0] == "## ✅ LLM scenarios: all passed"
    assert f"- **Scenarios:** 3 ({outcome_counts(summary)})" in text
    assert "- **Pass rate:** 100.0%" in text
    assert "mean **3**" in text
    assert "- **Tokens:** 360 live + 0 replayed (prompt 300, completion 60)" in text
    assert "`$0.001500` spent on live calls" in text  # costs in code spans: a bare $ can start GitHub's math
    assert "- No suite gates set." in text
    assert "Changes since" not in text and "### Transcripts" not in text


@pytest.mark.parametrize(("outcomes", "gates", "title"), [
    (["passed", "failed", "failed", "error"], Gates(), "## ❌ LLM scenarios: 2 failed, 1 errored"),
    (["passed", "failed"], Gates(min_pass_rate=0.9), "## ❌ LLM scenarios: 1 failed, suite gates missed"),
    (["passed", "xfailed"], Gates(min_mean_score=3.5), "## ❌ LLM scenarios: suite gates missed"),
    ([], Gates(), "## ⚠️ LLM scenarios: no scenario ran"),
])
def test_title_verdicts(outcomes: list[str], gates: Gates, title: str) -> None:
    records = [_record(f"s{i}", outcome, 1 if outcome in ("failed", "xfailed") else None if outcome == "error"
                       else 3) for i, outcome in enumerate(outcomes)]
    assert _render(records, gates).splitlines()[0] == title


def test_interrupted_run_is_marked_and_its_gates_not_checked() -> None:
    records = [_record("a")]
    summary = summarize(records, interrupted=True, unfinished=2)
    gates = Gates(min_mean_score=2)
    text = render_markdown(summary, gates, missed_gates(summary, gates), records, None)
    assert text.splitlines()[0] == "## ⚠️ LLM scenarios: no failure in the scenarios that finished, run interrupted"
    assert "**Partial run (interrupted):** 2 of 3 scenarios did not finish" in text
    assert "- ⚠️ Suite gates not checked: the run was interrupted." in text


def test_gates_met_and_missed_lines() -> None:
    records = [_record("a"), _record("b", "failed", 1)]
    met = _render(records, Gates(min_mean_score=1.5, max_cost_usd=1))
    assert "- ✅ All suite gates met (min mean score 1.5, max cost `$1`)." in met
    missed = _render(records, Gates(min_mean_score=2.5, min_pass_rate=0.75))
    lines = [line for line in missed.splitlines() if line.startswith("- ❌ Gate missed: ")]
    assert len(lines) == 2
    assert lines[0].startswith(r"- ❌ Gate missed: mean score 2 is below the minimum 2\.5")
    assert "pass rate 50\\.0%" in lines[1]


# -- changes since the baseline ------------------------------------------------------------------------------
def test_changes_table_rows_sorted_regressions_first() -> None:
    records = [_record(n) for n in ("same", "dropped", "broke", "fixed", "reworded", "brand_new")]
    longer = [*TRANSCRIPT, {"role": "client", "text": "And a drink."}]
    deltas = [
        _delta("same", "passed", "passed", 3, 3),
        _delta("fixed", "failed", "passed", 1, 3, old=longer, cost_delta_usd=-0.00025),
        _delta("reworded", "passed", "passed", 3, 3, old=_turns(4)),
        _delta("brand_new", None, "passed", None, 3),
        _delta("dropped", "passed", "passed", 3, 2, new=longer, cost_delta_usd=0.0001),
        _delta("broke", "passed", "failed", 3, 1),
    ]
    text = _render(records, deltas=deltas, baseline_label="main", new=["suite.yaml::brand_new"],
                   missing=["suite.yaml::gone"], mean_score_delta=-0.25)
    assert "### Changes since the baseline (main)" in text
    assert ("Scenarios: 2 regressed, 1 improved, 1 changed, 1 unchanged, 1 new, 1 missing (in the baseline, not in "
            "this run).") in text
    assert "Mean score delta: **-0.25**." in text
    assert r"Missing: suite\.yaml\:\:gone." in text
    rows = _table_rows(text)
    assert [row[0] for row in rows] == [r"suite\.yaml\:\:" + n.replace("_", r"\_")
                                        for n in ("broke", "dropped", "fixed", "reworded", "brand_new")]
    assert rows[0] == [r"suite\.yaml\:\:broke", "🔻 regressed", "3 → 1", "-2", "**passed → failed**", "+0",
                       "`+$0.000000`", "same"]
    assert rows[1] == [r"suite\.yaml\:\:dropped", "🔻 regressed", "3 → 2", "-1", "passed", "+1", "`+$0.000100`",
                       "changed"]
    assert rows[2] == [r"suite\.yaml\:\:fixed", "🟢 improved", "1 → 3", "+2", "**failed → passed**", "-1",
                       "`-$0.000250`", "changed"]
    assert rows[3][1:] == ["✏️ changed", "3 → 3", "+0", "passed", "+0", "`+$0.000000`", "changed"]
    assert rows[4][1:] == ["🆕 new", "– → 3", "", "new → passed", "", "", ""]
    assert text.splitlines()[0] == "## ✅ LLM scenarios: all passed, 2 regressed since the baseline"


def test_no_change_since_the_baseline() -> None:
    text = _render([_record("a")], deltas=[_delta("a", "passed", "passed", 3, 3)])
    assert "No scenario changed since the baseline." in text
    assert "| Scenario |" not in text and "### Transcripts" not in text


def test_failed_errored_and_changed_scenarios_get_transcripts() -> None:
    records = [_record("ok"), _record("bad", "failed", 1, comment="rude"), _record("boom", "error", None,
                                                                                  error="no reply"),
               _record("xf", "xfailed", 1), _record("moved")]
    changed = [*_turns(8), {"role": "agent", "text": "new ending"}]
    deltas = [_delta("moved", "passed", "passed", 3, 3, old=_turns(10), new=changed),
              _delta("bad", "passed", "failed", 3, 1, old=_turns(2))]
    text = _render(records, deltas=deltas)
    outside, blocks = _outside_fences(text)
    summaries = [line for line in outside if line.startswith("<details>")]
    assert len(summaries) == 3 == sum(line == "</details>" for line in outside)
    assert "❌ failed: <code>suite.yaml::bad</code> · score 1 (min 2) · 4 turns" in summaries[0]
    assert "❌ errored (agent_error): <code>suite.yaml::boom</code>" in summaries[1]
    assert "✏️ changed: <code>suite.yaml::moved</code> · score 3 → 3 · passed · transcript changed" in summaries[2]
    assert "xf" not in "".join(summaries)  # xfailed is expected: no transcript
    assert "judge: rude" in blocks[0] and "  4. Agent: [tool order({\"n\": 2}) -> ok] Done." in blocks[0]
    assert blocks[1].startswith("- 1. Customer: turn 0") and "+ 4. Agent: [tool order" in blocks[1]
    assert "error (agent_error): no reply" in blocks[2]
    assert blocks[3] == "judge (baseline): was fine\njudge (this run): now bad"
    # The changed scenario's diff: two turns of context, the unchanged start folded, turn 9 changed, 10 removed.
    assert blocks[4].split("\n") == ["@@ 6 unchanged turns @@", "  7. Customer: turn 6 ", "  8. Agent: turn 7 ",
                                     "- 9. Customer: turn 8 ", "- 10. Agent: turn 9 ", "+ 9. Agent: new ending"]


# -- escaping ------------------------------------------------------------------------------------------------
def test_hostile_text_cannot_break_out_or_inject_html() -> None:
    name = "x" + HOSTILE
    hostile_turns = [{"role": "client", "text": HOSTILE},
                     {"role": "agent", "text": HOSTILE, "tool_calls": [{"name": HOSTILE, "arguments": {"a": HOSTILE},
                                                                        "result": HOSTILE}]}]
    records = [_record(name, "failed", 1, transcript=hostile_turns, comment=HOSTILE, error=HOSTILE),
               _record("y" + HOSTILE, "error", None, transcript=hostile_turns, error=HOSTILE)]
    deltas = [_delta(name, "passed", "failed", 3, 1, nodeid=f"suite.yaml::{name}", new=hostile_turns),
              _delta("z", "passed", "passed", 3, 3, old=hostile_turns, new=_turns(2), old_comment=HOSTILE,
                     new_comment=HOSTILE)]
    text = _render(records, deltas=deltas, baseline_label=HOSTILE, missing=[HOSTILE])
    outside, blocks = _outside_fences(text)
    # Outside code blocks: only the tags this module writes, balanced; no raw HTML from the text.
    assert _tags(outside) <= ALLOWED_TAGS
    assert sum(line.startswith("<details><summary>") for line in outside) == 3
    assert sum(line == "</details>" for line in outside) == 3
    assert all(line.count("<summary>") == line.count("</summary>") == 1 for line in outside
               if line.startswith("<details>"))
    # A <summary> line is raw HTML (GitHub does not read markdown in it): entities, on one line.
    summaries = [line for line in outside if line.startswith("<details>")][:2]  # the hostile names
    assert all("&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;" in line
               for line in summaries)
    assert all("&amp;amp; &lt;!--" in line and "&lt;/summary&gt;" in line for line in summaries)
    # Everywhere else outside code blocks the text is markdown: entities and backslash escapes.
    markdown = "\n".join(line for line in outside if not line.startswith("<details>"))
    assert r"&lt;script&gt;alert\(1\)&lt;/script&gt;" in markdown and "&lt;/details&gt;" in markdown
    assert "[link]" not in markdown and "*em*" not in markdown and "$x$" not in markdown
    assert r"\[link\]\(http\:" in markdown and r"\$x\$" in markdown and "&amp;amp;" in markdown
    # Every table row keeps its 8 cells: the pipes in the text are escaped.
    assert [len(row) for row in _table_rows(text)] == [8, 8]
    # Inside the code blocks the text is verbatim (a code block shows it as text), so it is still readable.
    assert HOSTILE in blocks[0] and f"judge: {HOSTILE}" in blocks[0]
    assert any(f"- 1. Customer: {HOSTILE.splitlines()[0]}" in block for block in blocks)


def test_md_text_and_fences() -> None:
    assert md_text("a|b <i> & `c` *d*\nnext") == r"a\|b &lt;i&gt; &amp; \`c\` \*d\* next"
    assert fenced("plain") == "```text\nplain\n```"
    assert fenced("x ````` y", "diff").startswith("``````diff\n")
    assert fenced("```\n````").split("\n")[0] == "`````text"


# -- the size limit ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_thousand_long_transcripts_stay_under_the_limit() -> None:
    records = [_record(f"s{i:04d}", "failed", 1, transcript=_turns(12, "x" * (200 + i % 500)))
               for i in range(3000)]
    gates = Gates(min_pass_rate=0.5)
    text = _render(records, gates)
    size = len(text.encode("utf-8"))
    assert size <= 1_000_000
    assert text.startswith("## ❌ LLM scenarios: 3000 failed, suite gates missed")
    assert "- **Scenarios:** 3000 (0 passed, 3000 failed, 0 errored)" in text
    assert "- ❌ Gate missed: pass rate 0\\.0%" in text
    note = re.search(r"> \*\*Left out to keep this summary under 1,000,000 bytes:\*\* the transcripts of (\d+) "
                     r"scenarios, the longest", text)
    assert note is not None
    stubs = re.findall(r"^- ❌ failed: .*: transcript left out \(12 turns, \d+ kB\)", text, re.M)
    whole = text.count("<details><summary>")
    assert len(stubs) == int(note.group(1)) and whole + len(stubs) == 3000
    assert size > 900_000  # the room is used, not wasted
    assert "suite\\.yaml\\:\\:s2999" in text  # nothing dropped entirely: every scenario is named
    _outside_fences(text)


@pytest.mark.slow
def test_a_small_limit_drops_the_later_scenarios_and_says_so() -> None:
    records = [_record(f"s{i:04d}", "failed", 1, transcript=_turns(6, "y" * 300)) for i in range(3000)]
    text = _render(records, Gates(min_mean_score=2), limit_bytes=100_000)
    assert len(text.encode("utf-8")) <= 100_000
    match = re.search(r"the last (\d+) scenarios entirely: suite\\\.yaml\\:\\:s(\d{4})", text)
    assert match is not None
    dropped, first = int(match.group(1)), int(match.group(2))
    assert first == 3000 - dropped  # the later ones go first
    shown = text.count("<details><summary>") + len(re.findall(r"^- ❌ failed: ", text, re.M))
    assert shown + dropped == 3000
    assert "and " + str(dropped - 8) + " more" in text
    assert "- **Scenarios:** 3000" in text and "- ❌ Gate missed: mean score 1" in text


def test_everything_that_fits_is_kept_whole() -> None:
    records = [_record(f"s{i}", "failed", 1, transcript=_turns(4, "z" * 50)) for i in range(20)]
    text = _render(records)
    assert "Left out" not in text and text.count("<details><summary>") == 20


@pytest.mark.slow
def test_a_table_longer_than_the_limit_is_cut_with_a_note_and_the_totals_kept() -> None:
    records = [_record(f"s{i:04d}") for i in range(3000)]
    deltas = [_delta(f"s{i:04d}", "passed", "passed", 3 if i % 2 else 2, 3 if i % 2 == 0 else 2)
              for i in range(3000)]
    text = _render(records, Gates(min_mean_score=1), deltas, limit_bytes=50_000)
    assert len(text.encode("utf-8")) <= 50_000
    rows = _table_rows(text)
    cut = re.search(r"\*\*(\d+) more rows left out\*\* of this table", text)
    assert cut is not None and len(rows) + int(cut.group(1)) == 3000
    assert 0 < len(rows) < 1500 and all(row[1] == "🔻 regressed" for row in rows)  # regressions first
    assert "- **Scenarios:** 3000" in text and "- ✅ All suite gates met" in text
    # Under the default limit the same table is whole.
    assert len(_table_rows(_render(records, Gates(), deltas))) == 3000


# -- writing -------------------------------------------------------------------------------------------------
def test_write_markdown_and_step_summary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "summary.md"
    write_markdown(target, "# one\n")
    write_markdown(target, "# two\n")
    assert target.read_text(encoding="utf-8") == "# two\n"
    assert not [p for p in target.parent.iterdir() if p.name != "summary.md"]  # no temporary file left
    assert append_step_summary("# x\n", env={}) is None
    assert append_step_summary("# x\n", env={"GITHUB_STEP_SUMMARY": ""}) is None
    step = tmp_path / "step.md"
    step.write_text("earlier step\n", encoding="utf-8")
    assert append_step_summary("# llmsim ✅", env={"GITHUB_STEP_SUMMARY": str(step)}) == step
    assert step.read_text(encoding="utf-8") == "earlier step\n# llmsim ✅\n"
    with pytest.raises(OSError):
        append_step_summary("# x\n", env={"GITHUB_STEP_SUMMARY": str(tmp_path)})  # a directory


def test_markdown_report_does_not_import_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['_pytest'] = None\n"
            "import pytest_llmsim.reporting.markdown, pytest_llmsim.reporting.html\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
