"""Summary maths, gates, export writers and the histogram, as pure functions (no inner pytest session)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from pytest_llmsim.llm.pricing import PriceTable, scenario_cost
from pytest_llmsim.model.results import ModelUsage, ScenarioRecord, ScenarioResult
from pytest_llmsim.reporting.exports import _json_document_chunks, export_format, summary_path_for, write_results
from pytest_llmsim.reporting.histogram import HistogramUnavailable, draw_histogram
from pytest_llmsim.reporting.summary import RECORD_FIELDS, Gates, make_record, missed_gates, summarize


def _result(name: str, score: int | None, *, min_score: int = 2, live: int = 3, cached: int = 0,
            error_kind: str = "") -> dict[str, Any]:
    usage = ModelUsage("agent", "gpt-4o-mini")
    for _ in range(live):
        usage.add(100, 10, cached=False)
    for _ in range(cached):
        usage.add(100, 10, cached=True)
    status = "error" if score is None else ("passed" if score >= min_score else "failed")
    result = ScenarioResult(name, f"s.json::{name}", "s.json", status, min_score, score=score,
                            comment=f"comment <{name}>", transcript=[{"role": "client", "text": "hi, \"quoted\""},
                                                                     {"role": "agent", "text": "bye\nnow"}],
                            ended_by="agent", end_reason="the agent ended the call", error_kind=error_kind,
                            error_message="boom" if error_kind else "", duration_seconds=1.5, usage=[usage])
    return result.to_dict()


def _records() -> list[ScenarioRecord]:
    results = [_result("a", 3), _result("b", 3, cached=2), _result("mid_c", 2), _result("low_d", 1),
               _result("broken", None, live=1, error_kind="endpoint_error")]
    table = PriceTable.default()
    return [make_record(r, scenario_cost(r, table), run_id="run-1", outcome=r["status"]) for r in results]


def test_summary_maths_on_known_scores() -> None:
    summary = summarize(_records())
    assert (summary.total_scenarios, summary.successful_scenarios, summary.failed_scenarios,
            summary.errored_scenarios) == (5, 3, 1, 1)
    assert summary.success_rate == 0.6
    stats = summary.score_statistics
    # scores 3, 3, 2, 1: population std = sqrt(((0.75**2) * 2 + 0.25**2 + 1.25**2) / 4) = 0.8292
    assert (stats.mean, stats.median, stats.std, stats.min, stats.max) == (2.25, 2.5, 0.8292, 1, 3)
    assert summary.score_distribution == {"score_1": 1, "score_2": 1, "score_3": 2}
    # 13 live calls (3+3+3+3+1) of 110 tokens; 2 replayed calls
    assert (summary.total_requests, summary.total_tokens) == (13, 1430)
    assert (summary.replayed_requests, summary.replayed_tokens) == (2, 220)
    assert (summary.prompt_tokens, summary.completion_tokens) == (1500, 150)
    usage = genai_prices.Usage(input_tokens=100, output_tokens=10)
    per_call = float(genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price)
    assert summary.total_cost_usd == round(13 * per_call, 6)
    assert summary.saved_cost_usd == round(2 * per_call, 6)
    assert summary.average_cost_per_request == round(summary.total_cost_usd / 13, 8)
    assert summary.total_duration_seconds == 7.5


def test_summary_of_bare_results_and_of_nothing() -> None:
    bare = summarize([_result("a", 3), _result("b", 1)])  # ScenarioResult.to_dict() without cost fields
    assert bare.total_requests == 6 and bare.total_cost_usd == 0 and bare.score_statistics.std == 1.0
    empty = summarize([])
    assert empty.total_scenarios == 0 and empty.success_rate is None and empty.score_statistics.mean is None
    assert missed_gates(empty, Gates(min_mean_score=3, min_pass_rate=1, max_cost_usd=0)) == []


def test_single_score_has_zero_std() -> None:
    assert summarize([_result("a", 2)]).score_statistics.std == 0.0


def test_missed_gates_give_one_line_each() -> None:
    summary = summarize(_records())
    assert missed_gates(summary, Gates(min_mean_score=2.25, min_pass_rate=0.6, max_cost_usd=1.0)) == []
    lines = missed_gates(summary, Gates(min_mean_score=2.5, min_pass_rate=0.75, max_cost_usd=0.000001))
    assert len(lines) == 3
    assert lines[0] == "mean score 2.25 is below the minimum 2.5 (llmsim_min_mean_score)"
    assert lines[1].startswith("pass rate 60.0% (3 of 5 scenarios) is below the minimum 75.0%")
    assert lines[2].startswith(f"cost ${summary.total_cost_usd:.6f} spent on live calls is above the maximum")
    unscored = summarize([_result("x", None, error_kind="endpoint_error")])
    assert missed_gates(unscored, Gates(min_mean_score=1))[0].startswith("mean score: no scenario was scored")


@pytest.mark.parametrize("name", ["out.json", "out.ndjson", "out.jsonl", "out.csv"])
def test_exports_round_trip(tmp_path: Path, name: str) -> None:
    records = _records()
    summary = summarize(records).to_dict()
    path = tmp_path / "sub" / name
    written = write_results(path, records, summary, run_id="run-1", generated_at="2026-01-01T00:00:00+00:00")
    fmt = export_format(path)
    if fmt == "json":
        assert written == [path]
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["run_id"] == "run-1" and document["total_results"] == 5
        assert document["summary"] == summary
        assert document["results"] == [r.to_dict() for r in records]
        return
    assert written == [path, summary_path_for(path)]
    side = json.loads(summary_path_for(path).read_text(encoding="utf-8"))
    assert side == {"run_id": "run-1", "generated_at": "2026-01-01T00:00:00+00:00", **summary}
    if fmt == "ndjson":
        loaded = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert loaded == [r.to_dict() for r in records]
        assert summarize(loaded).to_dict() == summary  # the export alone reproduces its summary
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == list(RECORD_FIELDS)
        assert [r["scenario"] for r in rows] == ["a", "b", "mid_c", "low_d", "broken"]
        assert rows[0]["comment"] == "comment <a>" and rows[4]["score"] == "" and rows[1]["cached"] == "false"
        assert float(rows[0]["cost_usd"]) == records[0].cost_usd


def test_export_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.json"
    records = _records()
    write_results(path, records, summarize(records).to_dict(), run_id="one", generated_at="t")
    before = path.read_bytes()
    nan_score = dataclasses.replace(records[0].result, score=float("nan"))
    broken = [dataclasses.replace(records[0], result=nan_score)]  # not valid JSON: the writer refuses it
    with pytest.raises(ValueError):
        write_results(path, broken, {}, run_id="two", generated_at="t")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left behind

    def failing_replace(src: str, dst: str) -> None:
        assert Path(src).read_bytes().startswith(b"{") and Path(src).parent == path.parent
        raise OSError("disk full")

    monkeypatch.setattr("pytest_llmsim.reporting.exports.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_results(path, records, summarize(records).to_dict(), run_id="three", generated_at="t")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("name", ["out.json", "out.csv"])
def test_exports_respect_the_umask(tmp_path: Path, umask: int, name: str) -> None:
    """Like junit.xml and report.html (created by ``open()``): mode 0666 minus the umask, not mkstemp's 0600."""
    records = _records()
    previous = os.umask(umask)
    try:
        written = write_results(tmp_path / name, records, summarize(records).to_dict(), run_id="r", generated_at="t")
        (tmp_path / "plain").write_text("x")  # what open() makes under the same umask
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert [oct(stat.S_IMODE(path.stat().st_mode)) for path in written] == [oct(expected)] * len(written)


def test_unsupported_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.txt'.*\.json, \.ndjson, \.jsonl, \.csv"):
        export_format(tmp_path / "results.txt")


def test_histogram_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "h.png"
    draw_histogram(summarize(_records()), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(HistogramUnavailable, match=r"matplotlib.*pytest-llmsim\[histogram\]"):
        draw_histogram(summarize(_records()), tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_reporting_engine_does_not_import_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['_pytest'] = None\n"
            "import pytest_llmsim.llm.pricing, pytest_llmsim.reporting.summary, pytest_llmsim.reporting.exports\n"
            "import pytest_llmsim.reporting.histogram, pytest_llmsim.reporting.html, pytest_llmsim.model.results\n"
            "import pytest_llmsim.reporting.collector, pytest_llmsim.reporting.terminal\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("rows", [[], [{"a": 1, "t": [{"role": "agent", "text": "é\n"}]}, {"a": 2, "t": []}]])
@pytest.mark.parametrize("head", [{}, {"run_id": "r", "summary": {"x": [1, {"y": None}]}}])
def test_a_json_export_written_row_by_row_is_the_document_json_would_write(head: dict, rows: list) -> None:
    """The JSON export is written a row at a time (10 000 rows never exist as one string); the bytes are the
    document ``json.dumps(..., indent=2)`` gives for the whole thing."""
    whole = json.dumps({**head, "results": rows, "total_results": len(rows)}, ensure_ascii=False, indent=2) + "\n"
    assert "".join(_json_document_chunks(head, iter(rows))) == whole


def _unwritable(sim: Any, case: str, name: str) -> str:
    """The option's value (a path naming the file ``name``) for each way a path cannot be written."""
    if case == "a-folder":
        (sim.path / name).mkdir()
        return name
    if case == "parent-is-a-file":
        (sim.path / "blocker").write_text("x")
        return f"blocker/{name}"
    if case == "parent-cannot-be-created":  # even root cannot make a folder in /proc
        return f"/proc/nonexistent-dir/{name}"
    if case == "read-only-folder-sysfs":  # read-only for root too
        return f"/sys/{name}"
    assert case == "read-only-folder"
    folder = sim.path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return f"ro/{name}"


UNWRITABLE = ["a-folder", "parent-is-a-file",
              pytest.param("parent-cannot-be-created", marks=pytest.mark.skipif(
                  not sys.platform.startswith("linux"), reason="/proc")),
              pytest.param("read-only-folder-sysfs", marks=pytest.mark.skipif(
                  not sys.platform.startswith("linux"), reason="/sys")),
              pytest.param("read-only-folder", marks=pytest.mark.skipif(
                  sys.platform == "win32" or os.geteuid() == 0, reason="POSIX modes; root writes anyway"))]


@pytest.mark.parametrize("option", ["--llmsim-results", "--llmsim-markdown"])
@pytest.mark.parametrize("case", UNWRITABLE)
def test_a_file_that_cannot_be_written_fails_the_run_and_says_so_under_q(sim: Any, option: str,
                                                                           case: str) -> None:
    """Issue 24.16: an export or markdown path that cannot be written exited 0 with nothing said under -q."""
    from conftest import scenario

    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    value = _unwritable(sim, case, "r.json" if option == "--llmsim-results" else "r.md")
    result = sim.run("-q", f"{option}={value}")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "2 passed" in out  # the run's verdicts are still reported
    what = "results" if option == "--llmsim-results" else "the markdown summary"
    lines = [line for line in result.stdout.lines if line.startswith(f"llmsim: could not write {what} to ")]
    assert len(lines) == 1, out
    assert f"{value}: [Errno " in lines[0], lines[0]
    assert ".tmp" not in lines[0]  # the target, not the temporary file beside it


def test_a_run_whose_tests_failed_keeps_its_exit_status_when_a_file_cannot_be_written(sim: Any) -> None:
    from conftest import scenario

    sim.write_scenarios("s.json", [scenario("low_a"), scenario("b")])
    (sim.path / "r.json").mkdir()
    result = sim.run("-q", "--llmsim-results=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["llmsim: could not write results to *r.json: *it is a folder, not a file*"])


HOSTILE_CELLS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "'=already quoted", "''+x"]


@pytest.mark.parametrize("text", HOSTILE_CELLS)
def test_a_formula_in_any_text_never_reaches_an_exported_csv_unescaped(tmp_path: Path, text: str) -> None:
    """Scenario names (from a CSV of queries), comments and errors are text a spreadsheet would run as a formula;
    each such cell starts with a quote, numbers (a negative delta) stay numbers, and reading the export back gives
    the text exactly."""
    from pytest_llmsim.apps.cli.summarise import read_export

    result = ScenarioResult(scenario=text, nodeid=f"s.yaml::{text}", source="s.yaml", status="error",
                            min_score=2, comment=text, error_kind="metric", error_message=text,
                            metrics=[{"name": "judge", "score": -1.5, "passed": False, "reason": text, "details": {}}])
    record = make_record(result, scenario_cost(result.to_dict(), PriceTable.default()), run_id="r", outcome="error")
    path = tmp_path / "out.csv"
    write_results(path, [record], summarize([record]).to_dict(), run_id="r", generated_at="2026-01-01T00:00:00+00:00")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    formula_cells = [cell for row in rows[1:] for cell in row if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert formula_cells == []
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["scenario"] == "'" + text and row["comment"] == "'" + text
    assert row["metrics"] == "judge=-1.5:failed"
    back = read_export(path)[0]
    assert back["scenario"] == text and back["comment"] == text and back["error_message"] == text


def test_a_negative_number_in_a_csv_export_stays_a_number() -> None:
    from pytest_llmsim.reporting.exports import csv_safe, csv_unescaped

    assert csv_safe(-1) == -1 and csv_safe(-0.5) == -0.5 and csv_safe("plain") == "plain"
    for text in [*HOSTILE_CELLS, "plain", "'quoted", ""]:
        assert csv_unescaped(csv_safe(text)) == text
