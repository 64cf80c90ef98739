"""The history store: runs appended whole, beside the service's batches in one schema; concurrent writers lose
nothing; a corrupt, locked, newer or unwritable store is one clear HistoryError."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.errors import HistoryError
from pytest_llmsim.history.store import (
    SCHEMA_VERSION,
    GitInfo,
    HistoryStore,
    git_info,
    immediate,
    schema_version,
)
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status


def _records(count: int, run: str = "r", failing: int = -1) -> list[ScenarioRecord]:
    out = []
    for i in range(count):
        status = Status.FAILED if i == failing else Status.PASSED
        result = ScenarioResult(scenario=f"s{i}", nodeid=f"scenarios/a.yaml::s{i}", source="scenarios/a.yaml",
                                status=status, min_score=2, score=1 if status == Status.FAILED else 3,
                                comment="Polite and complete answer.",
                                transcript=[{"role": "client", "text": f"hi {run} <b>{i}</b>"},
                                            {"role": "agent", "text": "hello",
                                             "tool_calls": [{"name": "lookup", "arguments": {"id": i}}]}])
        out.append(ScenarioRecord(result=result, outcome=Outcome(status.value), run_id=run, cost_usd=0.0012))
    return out


def _append(store: HistoryStore, run_id: str, records: list[ScenarioRecord], *, created: str | None = None,
            status: str = "completed") -> None:
    store.append_run(run_id=run_id, status=status, records=records, summary={"pass_rate": 1.0},
                     started_at=created or datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                     git=GitInfo("abc123", "main", True), settings={"llmsim_trials": 1})


def test_a_run_is_stored_whole_and_read_back(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    records = _records(3, failing=1)
    _append(store, "run-1", records)
    [run] = store.runs()
    assert (run.run_id, run.status, run.source, run.scenarios) == ("run-1", "completed", "pytest", 3)
    assert (run.git_commit, run.git_branch, run.git_clean, run.settings) == ("abc123", "main", True,
                                                                            {"llmsim_trials": 1})
    back = store.records("run-1")
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]  # transcript, metrics, cost: all of it
    assert store.resolve("latest").run_id == "run-1" and store.resolve("run").run_id == "run-1"


def test_resolve_latest_n_and_ambiguous_prefixes(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    for n in range(3):
        _append(store, f"run-{n}", _records(1), created=f"2026-01-0{n + 1}T00:00:00.000+00:00")
    assert store.resolve("latest~2").run_id == "run-0"
    with pytest.raises(HistoryError, match="3 runs match"):
        store.resolve("run-")
    with pytest.raises(HistoryError, match="no run 'latest~3'"):
        store.resolve("latest~3")


def test_service_batches_and_pytest_runs_sit_side_by_side(tmp_path: Path) -> None:
    from pytest_llmsim.apps.service.store import Store

    path = tmp_path / "llmsim.sqlite3"
    service = Store(path)
    service.create_batch("batch-1", "batch-1", [{"name": "x"}])
    service.add_result("batch-1", 0, "passed", _records(1)[0].to_dict())
    service.set_status("batch-1", "completed")
    service.close()
    history = HistoryStore(path)
    _append(history, "run-1", _records(2))
    runs = {run.run_id: run for run in history.runs()}
    assert runs["batch-1"].source == "service" and runs["batch-1"].scenarios == 1
    assert runs["run-1"].source == "pytest"
    assert history.records("batch-1")[0].nodeid == "scenarios/a.yaml::s0"
    Store(path).close()  # the service opens the upgraded store again


def test_a_version_1_service_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE batches (batch_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_scenarios INTEGER NOT NULL,
            created_at TEXT NOT NULL, started_at TEXT, completed_at TEXT, run_id TEXT NOT NULL,
            webhook_deliveries INTEGER NOT NULL DEFAULT 0, webhook_failures INTEGER NOT NULL DEFAULT 0, summary TEXT);
        CREATE TABLE scenarios (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL,
            PRIMARY KEY (batch_id, idx));
        CREATE TABLE results (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, outcome TEXT NOT NULL,
            record TEXT NOT NULL, finished_at TEXT NOT NULL, PRIMARY KEY (batch_id, idx));
        INSERT INTO batches (batch_id, status, total_scenarios, created_at, run_id)
            VALUES ('old', 'completed', 0, '2025-01-01T00:00:00+00:00', 'old');
    """)
    db.commit()
    assert schema_version(db) == 1
    db.close()
    store = HistoryStore(path)
    _append(store, "new", _records(1))
    assert [run.run_id for run in store.runs()] == ["old", "new"]
    with sqlite3.connect(path) as db:
        assert schema_version(db) == SCHEMA_VERSION


def test_a_store_of_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    _append(store, "run-1", _records(1))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(HistoryError, match=r"schema version 99, newer than this pytest-llmsim reads \(2\)"):
        _append(store, "run-2", _records(1))
    with pytest.raises(HistoryError, match="schema version 99"):
        store.runs()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 1


def test_a_corrupt_store_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is no database, just some text" * 100)
    with pytest.raises(HistoryError, match=r"not a readable SQLite history .*move the file away") as info:
        _append(HistoryStore(path), "run-1", _records(1))
    assert "\n" not in str(info.value)
    assert path.read_bytes().startswith(b"this is no database")


@pytest.mark.parametrize("kind", ["folder", "/dev/zero"])
def test_a_store_that_is_a_folder_or_a_device_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    """A link to /dev/zero said "cannot rollback - no transaction is active" (the rollback hid the cause)."""
    path = tmp_path / "h.sqlite"
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    expected = "a directory" if kind == "folder" else "a character device"
    for action in (lambda: _append(HistoryStore(path), "run-1", _records(1)), HistoryStore(path).runs):
        with pytest.raises(HistoryError, match=f"h.sqlite is {expected}, not a file; give the path of a history "
                                               "file"):
            action()


def test_a_failed_transaction_that_sqlite_rolled_back_keeps_its_cause() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"), immediate(db):
        db.execute("ROLLBACK")  # as SQLite does by itself on some errors (an I/O error, a full disk)
        raise sqlite3.OperationalError("disk I/O error")
    assert not db.in_transaction


def test_a_store_locked_too_long_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    _append(HistoryStore(path), "run-1", _records(1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(HistoryError, match="locked by another process for too long"):
            _append(HistoryStore(path, timeout=0.2), "run-2", _records(1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [run.run_id for run in HistoryStore(path).runs()] == ["run-1"]


def test_a_store_on_a_path_that_cannot_be_written_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HistoryError, match="cannot write it"):
        _append(HistoryStore(blocker / "h.sqlite"), "run-1", _records(1))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_store_in_a_read_only_folder_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(HistoryError, match="cannot be written or opened"):
            _append(HistoryStore(folder / "h.sqlite"), "run-1", _records(1))
    finally:
        folder.chmod(0o700)


def _writer(path: str, worker: int, runs: int) -> None:
    store = HistoryStore(Path(path), timeout=60)
    for n in range(runs):
        _append(store, f"w{worker}-{n}", _records(40, run=f"w{worker}-{n}"))


@pytest.mark.slow
def test_concurrent_processes_writing_one_store_lose_no_run(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), worker, 5)) for worker in range(6)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    store = HistoryStore(path)
    runs = store.runs()
    assert sorted(run.run_id for run in runs) == sorted(f"w{w}-{n}" for w in range(6) for n in range(5))
    assert all(run.scenarios == 40 for run in runs)


def test_prune_keeps_the_newest_and_drops_the_old(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40)).isoformat(timespec="milliseconds")
    _append(store, "ancient", _records(2), created=old)
    for n in range(4):
        _append(store, f"run-{n}", _records(2), created=f"2099-01-0{n + 1}T00:00:00.000+00:00")
    assert store.prune(older_than=datetime.timedelta(days=30)) == ["ancient"]
    assert sorted(store.prune(keep=2)) == ["run-0", "run-1"]
    assert [run.run_id for run in store.runs()] == ["run-2", "run-3"]
    assert store.records("run-0") == []


def test_git_info_inside_and_outside_a_repository(tmp_path: Path) -> None:
    assert git_info(tmp_path) == GitInfo()
    info = git_info(Path(__file__).parent)
    if info.commit is not None:
        assert len(info.commit) == 40 and info.clean in (True, False)


def test_a_runs_records_are_filtered_and_paged_in_sql(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    records = _records(7, failing=3)
    records[3].result.metrics = [{"name": "judge", "score": 1, "passed": False, "details": {"blame": "agent"}},
                                 {"name": "rules", "passed": True}]
    records[5].result.metrics = [{"name": "rules", "score": 0.0, "passed": False}]
    for i in (1, 3, 5):
        records[i].result.tags = ["billing", "odd"] if i != 5 else ["odd"]
    _append(store, "run-1", records)
    assert store.run("run-1").scenarios == 7
    with pytest.raises(HistoryError, match="no run 'run-9'"):
        store.run("run-9")
    assert store.filter_values("run-1") == {"status": ["failed", "passed"], "blame": ["agent"],
                                            "metric": ["judge", "rules"], "tag": ["billing", "odd"]}

    def names(**filters: Any) -> tuple[int, list[str]]:
        total, page = store.records_page("run-1", **filters)
        return total, [r.result.scenario for r in page]

    assert names(status="failed") == (1, ["s3"])
    assert names(blame="agent") == (1, ["s3"])
    assert names(metric="rules") == (1, ["s5"])  # the scenarios where that metric did not pass
    assert names(metric="judge") == (1, ["s3"])
    assert names(tag="odd") == (3, ["s1", "s3", "s5"])
    assert names(tag="odd", status="passed") == (2, ["s1", "s5"])
    assert names(tag="od") == (0, [])  # a tag is matched whole
    assert names(offset=2, limit=3) == (7, ["s2", "s3", "s4"])  # in run order, a page at a time
    assert names(offset=6, limit=3) == (7, ["s6"])


def test_a_wal_store_on_a_read_only_disk_is_read_as_it_is(tmp_path: Path) -> None:
    """The service's database is WAL; on a read-only disk SQLite cannot make its shared-memory file, so a plain
    read-only open fails: the store is read as an immutable file. The reader runs without the power to write
    through file permissions (as root: with CAP_DAC_OVERRIDE dropped), so the folder is as a read-only disk."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "h.sqlite"
    _append(HistoryStore(path), "run-1", _records(3))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    folder.chmod(0o555)
    code = ("import sys; from pathlib import Path; from pytest_llmsim.history.store import HistoryStore; "
            "s = HistoryStore(Path(sys.argv[1])); print(s.check(), s.read_only_disk(), [r.run_id for r in s.runs()],"
            " len(s.records('run-1')))")
    command = [sys.executable, "-c", code, str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root writes through file permissions and setpriv (util-linux) is not there to drop that")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        plain = subprocess.run([*command[:-3], "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], uri=True);"
                                " db.execute('SELECT 1 FROM sqlite_master')", path.as_uri() + "?mode=ro"],
                               capture_output=True, text=True, timeout=60, check=False)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "1 True ['run-1'] 3", done.stderr[-2000:]
    assert plain.returncode != 0 and "readonly" in plain.stderr  # the control: a plain read-only open fails there
    assert sorted(p.name for p in folder.iterdir()) == ["h.sqlite"]
