"""The history store: one SQLite file where pytest runs and the service's batches sit side by side (no pytest).

The schema is the service's (``batches``, ``scenarios``, ``results``: one row per finished scenario, the whole
record as JSON with its transcript, metrics, usage and cost), extended, with a ``schema_version`` table:

* version 1: the service's tables as they first shipped (no version table);
* version 2: ``batches`` gains ``source`` (``pytest``; NULL: a service batch), ``git_commit``, ``git_branch``,
  ``git_clean`` and ``settings`` (the settings that change verdicts, JSON); ``results`` gains ``nodeid``.

``ensure_schema`` creates or upgrades a store in one immediate transaction (concurrent openers wait for each other);
a store of a newer version is refused (``HistoryError``), never rewritten.

A pytest run is appended once, at its end, by the controller (``append_run``): its batch row and every record in
one transaction, so a run is stored whole or not at all, and concurrent runs writing one store queue on SQLite's
lock (busy timeout) rather than lose a run. Anything wrong (a corrupt file, a lock held too long, a newer schema,
a read-only disk) is one ``HistoryError`` line; callers warn and carry on.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmsim.errors import HistoryError
from pytest_llmsim.history.compare import RunVerdicts
from pytest_llmsim.model.results import Outcome, ScenarioRecord
from pytest_llmsim.safe_files import file_kind

SCHEMA_VERSION = 2
COMPLETED, INTERRUPTED = "completed", "interrupted"
PYTEST_SOURCE = "pytest"
DEFAULT_TIMEOUT = 30.0  # seconds a writer waits for another's transaction before giving up (one warning)

# Version 1: the service's tables (``apps/service/store.py`` opens its database with ``ensure_schema`` too).
_TABLES = (
    """CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_scenarios INTEGER NOT NULL, created_at TEXT NOT NULL,
    started_at TEXT, completed_at TEXT, run_id TEXT NOT NULL, webhook_deliveries INTEGER NOT NULL DEFAULT 0,
    webhook_failures INTEGER NOT NULL DEFAULT 0, summary TEXT)""",
    """CREATE TABLE IF NOT EXISTS scenarios (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (batch_id, idx))""",
    """CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, outcome TEXT NOT NULL, record TEXT NOT NULL,
    finished_at TEXT NOT NULL, PRIMARY KEY (batch_id, idx))""",
)
# Version 2: what a run of the history adds.
_COLUMNS = (("batches", "source", "TEXT"), ("batches", "git_commit", "TEXT"), ("batches", "git_branch", "TEXT"),
            ("batches", "git_clean", "INTEGER"), ("batches", "settings", "TEXT"), ("results", "nodeid", "TEXT"))

# The options whose values change verdicts, stored with each run (``settings``).
VERDICT_SETTINGS = (
    "llmsim_model", "llmsim_agent_model", "llmsim_client_model", "llmsim_evaluator_model",
    "llmsim_agent_temperature", "llmsim_client_temperature", "llmsim_evaluator_temperature",
    "llmsim_judge_policy", "llmsim_judge_method", "llmsim_judge_repeats", "llmsim_trials",
    "llmsim_scenario_min_pass_rate", "llmsim_seed", "llmsim_min_score", "llmsim_max_turns", "llmsim_evaluate",
    "llmsim_record_mode", "llmsim_agent",
)


def verdict_settings(values: Mapping[str, Any], records: Iterable[ScenarioRecord]) -> dict[str, Any]:
    """What a run stores of its settings: the options that change verdicts (``VERDICT_SETTINGS``, as resolved)
    and the models each role actually called (a replay takes its recordings' models)."""
    settings: dict[str, Any] = {}
    for name in VERDICT_SETTINGS:
        value = values.get(name)
        settings[name] = str(value) if isinstance(value, Path) else value
    models: dict[str, set[str]] = {}
    for record in records:
        for usage in record.result.usage:
            models.setdefault(usage.role, set()).add(usage.model)
    settings["models"] = {role: sorted(names) for role, names in sorted(models.items())}
    return settings


_VERDICTS = {Outcome.PASSED.value: True, Outcome.XPASSED.value: True, Outcome.FAILED.value: False,
             Outcome.ERROR.value: False}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


# -- schema -----------------------------------------------------------------------------------------------------
def schema_version(db: sqlite3.Connection) -> int:
    """The store's version: 0 (empty), 1 (the service's tables, no version table) or the version row's."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)
    return 1 if "batches" in tables else 0


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (``BEGIN IMMEDIATE``: writers queue on the busy timeout), committed
    whole or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back itself (an I/O error): the cause, not "no transaction"
            db.execute("ROLLBACK")
        raise


def ensure_schema(db: sqlite3.Connection, where: str = "the store") -> None:
    """Create or upgrade the schema to ``SCHEMA_VERSION`` in one immediate transaction; ``HistoryError`` for a
    store of a newer version (left as it is)."""
    with immediate(db):
        version = schema_version(db)
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{where} has schema version {version}, newer than this pytest-llmsim reads "
                               f"({SCHEMA_VERSION}); upgrade pytest-llmsim or give another history file")
        if version < SCHEMA_VERSION:
            for ddl in _TABLES:
                db.execute(ddl)
            for table, column, kind in _COLUMNS:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            db.execute("CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at)")
            db.execute("CREATE INDEX IF NOT EXISTS results_nodeid ON results (nodeid)")


# -- git ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GitInfo:
    commit: str | None = None
    branch: str | None = None
    clean: bool | None = None  # no uncommitted change to tracked files


def git_info(folder: Path) -> GitInfo:
    """The commit, branch and cleanliness of the repository ``folder`` is in (all None outside one, or without
    git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return GitInfo()
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitInfo(commit, branch if branch and branch != "HEAD" else None,
                   None if status is None else status == "")


# -- the store ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """A run as the history lists it."""

    run_id: str
    status: str
    source: str  # "pytest" or "service"
    created_at: str
    completed_at: str | None
    scenarios: int
    git_commit: str | None = None
    git_branch: str | None = None
    git_clean: bool | None = None
    settings: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None

    @property
    def settings_key(self) -> str:
        return json.dumps(self.settings or {}, sort_keys=True, default=str)

    def figure(self, name: str) -> Any:
        return (self.summary or {}).get(name)


class HistoryStore:
    """A history file. Each method opens its own connection (short-lived: runs of other processes interleave)."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT, shown: str = "") -> None:
        self.path = path
        self.timeout = timeout
        self.where = f"history {shown or path}"

    def read_only_disk(self) -> bool:
        """The store's folder cannot be written (a read-only disk or mount, or no permission)."""
        return self.path.is_file() and not os.access(self.path.parent, os.W_OK)

    def check(self) -> int:
        """Open the store for reading and count its runs: ``HistoryError`` (one line) for a missing, corrupt,
        newer or unreadable store, so a front says so before serving anything."""
        with self._connect(write=False) as db:
            return int(db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection with the schema checked (created or upgraded when writing); every sqlite or file error
        becomes one ``HistoryError`` line."""
        db: sqlite3.Connection | None = None
        try:
            if self.path.exists() and not self.path.is_file():  # a folder, /dev/zero, a FIFO
                raise HistoryError(f"{self.where} is {file_kind(self.path.stat().st_mode)}, not a file; give the "
                                   "path of a history file (created when missing)")
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise HistoryError(f"{self.where} does not exist; a run writes it with --llmsim-history PATH")
            uri = self.path.resolve().as_uri() + ("" if write else "?mode=ro")
            try:
                db = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
                if not write:
                    db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            except sqlite3.OperationalError:
                if write or not self.read_only_disk():
                    raise
                # A WAL file on a read-only disk: SQLite cannot make its shared-memory file, so it is read as an
                # immutable file (nobody can write it there), as it is.
                if db is not None:
                    db.close()
                db = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=self.timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            if write:
                # The journal mode is the file's (the service makes its database WAL); a history of its own keeps
                # SQLite's rollback journal, which writes an appended run once. NORMAL: no sync per statement.
                db.execute("PRAGMA synchronous=NORMAL")
                ensure_schema(db, self.where)
            else:
                version = schema_version(db)
                if version > SCHEMA_VERSION:
                    raise HistoryError(f"{self.where} has schema version {version}, newer than this pytest-llmsim "
                                       f"reads ({SCHEMA_VERSION}); upgrade pytest-llmsim")
                if version < SCHEMA_VERSION:
                    raise HistoryError(f"{self.where} holds no runs yet (schema version {version}); a run writes "
                                       "it with --llmsim-history PATH")
            yield db
        except sqlite3.Error as exc:
            raise HistoryError(f"{self.where}: {_explain(exc)}") from None
        except OSError as exc:
            raise HistoryError(f"{self.where}: cannot {'write' if write else 'read'} it "
                               f"({exc.strerror or exc})") from None
        finally:
            if db is not None:
                db.close()

    # -- writing ------------------------------------------------------------------------------------------------
    def append_run(self, *, run_id: str, status: str, records: Iterable[ScenarioRecord | Mapping[str, Any]],
                   summary: Mapping[str, Any], started_at: str, completed_at: str | None = None,
                   git: GitInfo = GitInfo(), settings: Mapping[str, Any] | None = None,
                   source: str = PYTEST_SOURCE) -> int:
        """Store one run and its records in one transaction; the number of records stored."""
        rows = []
        finished = completed_at or now()
        for index, record in enumerate(records):
            data = record.to_dict() if isinstance(record, ScenarioRecord) else dict(record)
            rows.append((run_id, index, str(data.get("outcome") or data.get("status") or ""),
                         json.dumps(data, ensure_ascii=False, default=str), finished, str(data.get("nodeid") or "")))
        with self._connect(write=True) as db, immediate(db):
            db.execute(
                "INSERT INTO batches (batch_id, status, total_scenarios, created_at, started_at, completed_at, "
                "run_id, summary, source, git_commit, git_branch, git_clean, settings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, status, len(rows), started_at, started_at, finished, run_id,
                 json.dumps(dict(summary), ensure_ascii=False, default=str), source, git.commit, git.branch,
                 None if git.clean is None else int(git.clean),
                 json.dumps(dict(settings or {}), ensure_ascii=False, default=str)))
            db.executemany("INSERT INTO results (batch_id, idx, outcome, record, finished_at, nodeid) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def prune(self, *, keep: int | None = None, older_than: datetime.timedelta | None = None) -> list[str]:
        """Delete runs (and their records): all but the newest ``keep``, and those created more than
        ``older_than`` ago. The deleted run ids."""
        with self._connect(write=True) as db, immediate(db):
            ids = [row[0] for row in db.execute("SELECT batch_id FROM batches ORDER BY created_at DESC, "
                                                "batch_id DESC")]
            doomed = set(ids[keep:]) if keep is not None else set()
            if older_than is not None:
                cutoff = (datetime.datetime.now(datetime.UTC) - older_than).isoformat(timespec="milliseconds")
                doomed |= {row[0] for row in db.execute("SELECT batch_id FROM batches WHERE created_at < ?",
                                                        (cutoff,))}
            for table in ("results", "scenarios", "batches"):
                db.executemany(f"DELETE FROM {table} WHERE batch_id = ?", [(i,) for i in doomed])
        return [i for i in ids if i in doomed]

    # -- reading ------------------------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """Every run and batch, oldest first."""
        with self._connect(write=False) as db:
            return [_run_info(row) for row in db.execute(f"{_RUN_SELECT} ORDER BY created_at, batch_id")]

    def resolve(self, ref: str) -> RunInfo:
        """A run by id, unique id prefix, ``latest`` or ``latest~N`` (N runs before the latest)."""
        runs = self.runs()
        if ref == "latest" or ref.startswith("latest~"):
            back = ref.partition("~")[2]
            steps = int(back) if back.isdigit() else 0 if not back else -1
            if steps < 0 or steps >= len(runs):
                raise HistoryError(f"{self.where}: no run {ref!r} ({len(runs)} run(s) stored)")
            return runs[-1 - steps]
        found = [run for run in runs if run.run_id == ref] or [run for run in runs if run.run_id.startswith(ref)]
        if len(found) != 1:
            what = "no run" if not found else f"{len(found)} runs match"
            raise HistoryError(f"{self.where}: {what} {ref!r}; give a run id (llmsim history lists them), a unique "
                               "prefix, latest or latest~N")
        return found[0]

    def records(self, run_id: str) -> list[ScenarioRecord]:
        """A run's records, in run order."""
        with self._connect(write=False) as db:
            rows = db.execute("SELECT record FROM results WHERE batch_id = ? ORDER BY idx", (run_id,)).fetchall()
        try:
            return [ScenarioRecord.from_dict(json.loads(row[0])) for row in rows]
        except (ValueError, TypeError, KeyError) as exc:
            raise HistoryError(f"{self.where}: run {run_id}: a record cannot be read ({exc})") from None

    def run(self, run_id: str) -> RunInfo:
        """One run by its exact id (``HistoryError`` when the history does not hold it)."""
        with self._connect(write=False) as db:
            row = db.execute(f"{_RUN_SELECT} WHERE b.batch_id = ?", (run_id,)).fetchone()
        if row is None:
            raise HistoryError(f"{self.where}: no run {run_id!r}; llmsim history lists the runs")
        return _run_info(row)

    def filter_values(self, run_id: str) -> dict[str, list[str]]:
        """The values a run's scenarios can be filtered by: ``status`` (outcomes), ``blame``, ``metric`` (names of
        the metrics evaluated) and ``tag``, each sorted, from SQL over the stored JSON (no record is parsed)."""
        queries = {
            "status": "SELECT DISTINCT outcome FROM results WHERE batch_id = ?",
            "blame": "SELECT DISTINCT json_extract(record, '$.blame') FROM results WHERE batch_id = ?",
            "metric": "SELECT DISTINCT json_extract(m.value, '$.name') FROM results, json_each(results.record, "
                      "'$.metrics') AS m WHERE batch_id = ? AND json_valid(record)",
            "tag": "SELECT DISTINCT t.value FROM results, json_each(results.record, '$.tags') AS t "
                   "WHERE batch_id = ? AND json_type(record, '$.tags') = 'array'",
        }
        with self._connect(write=False) as db:
            return {name: sorted(str(row[0]) for row in db.execute(sql, (run_id,)) if row[0] not in (None, ""))
                    for name, sql in queries.items()}

    def records_page(self, run_id: str, *, status: str = "", blame: str = "", metric: str = "", tag: str = "",
                     offset: int = 0, limit: int = 100) -> tuple[int, list[ScenarioRecord]]:
        """A run's records that match the filters (each "": any), in run order: how many match, and the
        ``limit`` of them from ``offset`` (only those are parsed). ``metric``: the scenarios where that metric
        did not pass; ``tag``: the scenarios with that tag."""
        where, params = ["batch_id = ?"], [run_id]
        if status:
            where.append("outcome = ?")
            params.append(status)
        if blame:
            where.append("json_extract(record, '$.blame') = ?")
            params.append(blame)
        if metric:
            where.append("EXISTS (SELECT 1 FROM json_each(results.record, '$.metrics') AS m WHERE "
                         "json_extract(m.value, '$.name') = ? AND COALESCE(json_extract(m.value, '$.passed'), 0) "
                         "!= 1)")
            params.append(metric)
        if tag:
            where.append("json_type(record, '$.tags') = 'array' AND EXISTS (SELECT 1 FROM "
                         "json_each(results.record, '$.tags') AS t WHERE t.value = ?)")
            params.append(tag)
        condition = " AND ".join(where)
        with self._connect(write=False) as db:
            total = int(db.execute(f"SELECT COUNT(*) FROM results WHERE {condition}", params).fetchone()[0])
            rows = db.execute(f"SELECT record FROM results WHERE {condition} ORDER BY idx LIMIT ? OFFSET ?",
                              (*params, max(0, limit), max(0, offset))).fetchall()
        try:
            return total, [ScenarioRecord.from_dict(json.loads(row[0])) for row in rows]
        except (ValueError, TypeError, KeyError) as exc:
            raise HistoryError(f"{self.where}: run {run_id}: a record cannot be read ({exc})") from None

    def scenario_history(self, nodeid: str, last: int = 50) -> list[tuple[RunInfo, ScenarioRecord]]:
        """One scenario's record in each of the last ``last`` runs that ran it, newest first."""
        runs = {run.run_id: run for run in self.runs()}
        with self._connect(write=False) as db:
            rows = db.execute("SELECT batch_id, record FROM results WHERE nodeid = ?", (nodeid,)).fetchall()
        found = sorted(((runs[row[0]], row[1]) for row in rows if row[0] in runs),
                       key=lambda pair: (pair[0].created_at, pair[0].run_id), reverse=True)[:last]
        try:
            return [(run, ScenarioRecord.from_dict(json.loads(text))) for run, text in found]
        except (ValueError, TypeError, KeyError) as exc:
            raise HistoryError(f"{self.where}: scenario {nodeid}: a record cannot be read ({exc})") from None

    def run_verdicts(self, last: int | None = None) -> list[RunVerdicts]:
        """Each run's scenario verdicts (passed or not; skipped and xfailed left out), oldest first: the last
        ``last`` runs, from the outcome column alone (no record is parsed)."""
        runs = self.runs()
        if last is not None:
            runs = runs[-last:] if last > 0 else []
        verdicts: dict[str, dict[str, bool]] = {run.run_id: {} for run in runs}
        with self._connect(write=False) as db:
            for run in runs:
                for nodeid, outcome in db.execute(
                        "SELECT COALESCE(NULLIF(nodeid, ''), json_extract(record, '$.nodeid')), outcome FROM results "
                        "WHERE batch_id = ? ORDER BY idx", (run.run_id,)):
                    if outcome in _VERDICTS and nodeid:
                        verdicts[run.run_id][nodeid] = _VERDICTS[outcome]
        return [RunVerdicts(run.run_id, run.created_at, run.git_commit, bool(run.git_clean), run.settings_key,
                            verdicts[run.run_id]) for run in runs]


_RUN_SELECT = "SELECT b.*, (SELECT COUNT(*) FROM results r WHERE r.batch_id = b.batch_id) AS stored FROM batches b"


def _run_info(row: sqlite3.Row) -> RunInfo:
    keys = row.keys()

    def loads(name: str) -> Mapping[str, Any] | None:
        text = row[name] if name in keys else None
        try:
            value = json.loads(text) if text else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    clean = row["git_clean"] if "git_clean" in keys else None
    return RunInfo(run_id=row["batch_id"], status=row["status"], source=row["source"] or "service",
                   created_at=row["created_at"], completed_at=row["completed_at"], scenarios=row["stored"],
                   git_commit=row["git_commit"], git_branch=row["git_branch"],
                   git_clean=None if clean is None else bool(clean), settings=loads("settings"),
                   summary=loads("summary"))


def _explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"not a readable SQLite history ({text}); move the file away or give another path"
    if "locked" in text or "busy" in text:
        return f"locked by another process for too long ({text}); the run was not stored"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"cannot be written or opened ({text}); give a writable path"
    return text
