"""``llmsim history`` (list, prune, flaky), ``llmsim compare`` and ``llmsim view`` over a real history store and
exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SimProject, scenario
from pytest_llmsim.apps.cli import main
from pytest_llmsim.history.store import GitInfo, HistoryStore
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.reporting.exports import write_results
from pytest_llmsim.reporting.summary import summarize


def _run(passing: int, total: int = 12, trials: int = 1) -> list[ScenarioRecord]:
    """``total`` scenarios of which the first ``passing`` pass every trial and the others fail every one."""
    records = []
    for i in range(total):
        status = Status.PASSED if i < passing else Status.FAILED
        score = 3 if status == Status.PASSED else 1
        rows = [{"scenario": f"case_{i}", "nodeid": f"s.yaml::case_{i}", "source": "s.yaml", "status": str(status),
                 "min_score": 2, "score": score, "trial": t} for t in range(1, trials + 1)] if trials > 1 else []
        result = ScenarioResult(scenario=f"case_{i}", nodeid=f"s.yaml::case_{i}", source="s.yaml", status=status,
                                min_score=2, score=score, comment="A comment of words.", trials=rows,
                                transcript=[{"role": "client", "text": "<script>alert(1)</script>"}])
        records.append(ScenarioRecord(result=result, outcome=Outcome(status.value), cost_usd=0.001))
    return records


def _store(path: Path, runs: list[tuple[str, list[ScenarioRecord], str]]) -> HistoryStore:
    store = HistoryStore(path)
    for run_id, records, created in runs:
        store.append_run(run_id=run_id, status="completed", records=records,
                         summary=summarize(records).to_dict(), started_at=created,
                         git=GitInfo("c0ffee" * 6 + "abcd", "main", True), settings={"llmsim_trials": 1})
    return store


def test_history_lists_runs_and_prunes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.sqlite"
    _store(path, [(f"run{n}-0000", _run(12 - n), f"2026-01-0{n + 1}T10:00:00.000+00:00") for n in range(3)])
    assert main(["history", "--path", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("run0-000  2026-01-01 10:00:00  completed    pytest       12  100.0%   3.00")
    assert "c0ffeec0ff main" in out[1] and out[-1] == f"3 run(s) in {path}"
    assert main(["history", "--path", str(path), "--format", "json"]) == 0
    assert [run["run_id"] for run in json.loads(capsys.readouterr().out)] == ["run0-0000", "run1-0000", "run2-0000"]
    assert main(["history", "--path", str(path), "prune", "--keep", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"llmsim: 2 run(s) deleted from {path}"
    assert [run.run_id for run in HistoryStore(path).runs()] == ["run2-0000"]


def test_history_flaky_names_the_run_a_scenario_started_failing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.sqlite"
    _store(path, [("aaaa0000", _run(12), "2026-01-01T00:00:00.000+00:00"),
                  ("bbbb0000", _run(11), "2026-01-02T00:00:00.000+00:00"),
                  ("cccc0000", _run(11), "2026-01-03T00:00:00.000+00:00")])
    assert main(["history", "--path", str(path), "flaky"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["s.yaml::case_11: passed 1 of the last 3 runs (33%), 1 flip(s), failing since run bbbb0000 "
                     "(2026-01-02T00:00:00.000+00:00), noisy (flips with no change to the agent)"]


def test_compare_two_runs_of_the_history_gates_a_significant_drop(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.sqlite"
    store = _store(path, [("good0000", _run(12, trials=5), "2026-01-01T00:00:00.000+00:00"),
                          ("bad00000", _run(2, trials=5), "2026-01-02T00:00:00.000+00:00")])
    store.append_run(run_id="head0000", status="completed", records=_run(2, trials=5), summary={},
                     started_at="2026-01-03T00:00:00.000+00:00", git=GitInfo("other", "pr", True))
    code = main(["compare", "good", "head", "--history", str(path), "--fail-on-significant-regression"])
    out = capsys.readouterr().out
    assert code == 1
    assert "pass rate 1.000 -> 0.167 (-0.833, 95% interval" in out
    assert "exact sign-flip permutation test p = 0.002 over 12 scenarios" in out
    assert "s.yaml::case_5: passed 5/5 -> 0/5 (-1.00, 95% interval" in out and "SIGNIFICANT drop" in out
    assert "significant regression: 10 scenario(s) significantly worse" in out
    assert main(["compare", "good", "head", "--history", str(path)]) == 0  # no gate asked: report only
    capsys.readouterr()
    # Two runs of one clean commit: every flip is noise, and said so.
    assert main(["compare", "good0000", "bad0000", "--history", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["same_agent"] is True and sum(s["noisy"] for s in data["scenarios"]) == 10


def test_compare_an_export_with_a_run_and_bad_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "base.json"
    records = _run(12)
    write_results(export, records, summarize(records).to_dict(), run_id="x", generated_at="2026-01-01T00:00:00")
    path = tmp_path / "h.sqlite"
    _store(path, [("run00000", _run(11), "2026-01-01T00:00:00.000+00:00")])
    assert main(["compare", str(export), "latest", "--history", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s.yaml::case_11: passed 1/1 -> 0/1" in out and "one trial per scenario" in out
    assert main(["compare", str(export), "nope", "--history", str(path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["compare", str(export), "latest"]) == 2  # no history anywhere: one line
    assert "no history to find a run 'latest' in" in capsys.readouterr().err
    assert main(["history", "--path", str(path), "prune"]) == 2
    assert "give --keep N or --older-than D" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--fail-on-significant-regression", "--alpha"])
@pytest.mark.parametrize("level", ["0", "-1", "1", "nan"])
def test_compare_refuses_a_level_outside_0_to_1_rather_than_using_the_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, level: str) -> None:
    export = tmp_path / "base.json"
    write_results(export, _run(12), summarize(_run(12)).to_dict(), run_id="x", generated_at="2026-01-01T00:00:00")
    assert main(["compare", str(export), str(export), f"{flag}={level}"]) == 2
    assert f"alpha {level}: give a level between 0 and 1" in capsys.readouterr().err


def test_compare_gate_over_runs_sharing_no_scenario_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write_results(old, _run(12), summarize(_run(12)).to_dict(), run_id="x", generated_at="2026-01-01T00:00:00")
    renamed = json.loads(old.read_text())
    for row in renamed["results"]:
        row["nodeid"] = row["nodeid"].replace("case_", "renamed_")
    new.write_text(json.dumps(renamed))
    assert main(["compare", str(old), str(new), "--fail-on-significant-regression"]) == 1
    assert "significant regression: no scenario ran in both" in capsys.readouterr().out
    assert main(["compare", str(old), str(new)]) == 0  # no gate asked: report only


def _serve_view(path: Path, *prefix: str) -> tuple[str, str]:
    """``llmsim view PATH`` in a process of its own: what it says before serving, and its runs page and first run's
    page (fetched over HTTP), then it is stopped."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([*prefix, sys.executable, "-m", "pytest_llmsim.apps.cli", "view", str(path), "--port",
                                str(port)], stderr=subprocess.PIPE, text=True, cwd=path.parent)
    try:
        said = []
        assert process.stderr is not None
        for line in process.stderr:
            said.append(line)
            if "the viewer is at" in line:
                break
        assert "the viewer is at" in "".join(said), "".join(said)
        deadline, page = time.monotonic() + 30, None
        while page is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/view", timeout=10)
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "".join(said)
                time.sleep(0.1)
        assert page.status_code == 200, page.text
        run = re.search(r"href='(/view/runs/[^']+)'", page.text)
        assert run is not None, page.text
        return "".join(said), page.text + httpx.get(f"http://127.0.0.1:{port}{run.group(1)}", timeout=10).text
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run.json", "run.ndjson"])
def test_view_opens_an_export_as_a_history_of_one_run(tmp_path: Path, name: str) -> None:
    pytest.importorskip("fastapi")
    export = tmp_path / name
    records = _run(9)
    write_results(export, records, summarize(records).to_dict(), run_id="x", generated_at="2026-01-01T00:00:00")
    before = sorted(p.name for p in tmp_path.iterdir())
    said, pages = _serve_view(export)
    assert f"(history {export} (export))" in said and "1 run(s) in history" in pages
    assert "9 of 12 scenario(s)" not in pages and "12 of 12 scenario(s)" in pages and "s.yaml::case_11" in pages
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages and "<script>" not in pages
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the export is read, nothing written beside it


@pytest.mark.slow
def test_view_shows_a_store_on_a_read_only_disk_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "h.sqlite"
    _store(path, [("run00000", _run(11), "2026-01-01T00:00:00.000+00:00")])
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as the service's database: a plain read-only open fails there
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes through file permissions: drop that power, so the folder is as a RO disk
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root writes through file permissions and setpriv (util-linux) is not there to drop that")
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    folder.chmod(0o555)
    try:
        said, pages = _serve_view(path, *prefix)
    finally:
        folder.chmod(0o755)
    assert said.splitlines()[0] == f"llmsim: history {path} is on a read-only disk: shown as it is, read-only"
    assert "11 of 12 scenario(s)" not in pages and "12 of 12 scenario(s)" in pages


def test_view_says_in_one_line_what_is_wrong_with_a_store(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Before anything is served: a missing, corrupt or newer store, or an export that is none, is one line."""
    pytest.importorskip("fastapi")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is no database, just some text" * 100)
    newer = tmp_path / "newer.sqlite"
    _store(newer, [("run00000", _run(3), "2026-01-01T00:00:00.000+00:00")])
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema_version SET version = 99")
    notes = tmp_path / "notes.txt"
    notes.write_text("just notes")
    expected = {corrupt: "not a readable SQLite history", newer: "has schema version 99, newer than this",
                tmp_path / "missing.sqlite": "does not exist; a run writes it with --llmsim-history PATH",
                notes: f"llmsim view {notes} is not valid JSON",
                tmp_path / "missing.json": "does not exist; give a JSON export (--llmsim-results run.json)"}
    for path, message in expected.items():
        assert main(["view", str(path), "--port", "9"]) == 2, path
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("llmsim: "), err


@pytest.mark.slow
def test_view_opens_a_recordings_folder_as_a_run(sim: SimProject) -> None:
    pytest.importorskip("fastapi")
    sim.write_scenarios("s.json", [scenario("refund"), scenario("greeting")])
    sim.run("--llmsim-recordings=rec").assert_outcomes(passed=2)
    said, pages = _serve_view(sim.path / "rec")
    assert f"(history {sim.path / 'rec'} (" in said and "2 of 2 scenario(s)" in pages
    assert "s.json::refund" in pages and "s.json::greeting" in pages
