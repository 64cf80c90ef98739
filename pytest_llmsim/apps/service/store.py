"""The service's SQLite store: batches, their scenarios and one row per finished scenario (record, transcript and
usage in the record's JSON). The schema is the run history's (``history.store``: pytest runs sit beside the batches
in one file; ``ensure_schema`` creates and upgrades it). WAL mode, so readers (results streamed to clients) never
wait for the batch writing.

Writes go through one connection under a lock; each reader opens its own connection and reads in chunks, so a
10 000-scenario batch streams out without being loaded. No secret is ever written: records are scrubbed by the
engine, and the settings (with the API key) are never stored.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pytest_llmsim.history.store import ensure_schema

LAUNCHED, RUNNING, COMPLETED, CANCELLED, INTERRUPTED = "launched", "running", "completed", "cancelled", "interrupted"
ACTIVE = (LAUNCHED, RUNNING)
CHUNK = 200



def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        ensure_schema(self._db, f"service database {path}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -----------------------------------------------------------------------------------------------
    def create_batch(self, batch_id: str, run_id: str, scenarios: Iterable[dict[str, Any]]) -> int:
        with self._lock, self._db:
            count = 0
            for index, data in enumerate(scenarios):
                self._db.execute("INSERT INTO scenarios (batch_id, idx, data) VALUES (?, ?, ?)",
                                 (batch_id, index, json.dumps(data, ensure_ascii=False)))
                count += 1
            self._db.execute("INSERT INTO batches (batch_id, status, total_scenarios, created_at, run_id) "
                             "VALUES (?, ?, ?, ?, ?)", (batch_id, LAUNCHED, count, now(), run_id))
        return count

    def set_status(self, batch_id: str, status: str) -> None:
        with self._lock, self._db:
            if status == RUNNING:
                self._db.execute("UPDATE batches SET status = ?, started_at = COALESCE(started_at, ?), "
                                 "completed_at = NULL WHERE batch_id = ?", (status, now(), batch_id))
            elif status in (COMPLETED, CANCELLED):
                self._db.execute("UPDATE batches SET status = ?, completed_at = ? WHERE batch_id = ?",
                                 (status, now(), batch_id))
            else:
                self._db.execute("UPDATE batches SET status = ? WHERE batch_id = ?", (status, batch_id))

    def set_summary(self, batch_id: str, summary: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE batches SET summary = ? WHERE batch_id = ?",
                             (json.dumps(summary, ensure_ascii=False), batch_id))

    def add_result(self, batch_id: str, index: int, outcome: str, record: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO results (batch_id, idx, outcome, record, finished_at, nodeid) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (batch_id, index, outcome,
                                                           json.dumps(record, ensure_ascii=False), now(),
                                                           str(record.get("nodeid") or "")))

    def count_webhook(self, batch_id: str, delivered: bool) -> None:
        column = "webhook_deliveries" if delivered else "webhook_failures"
        with self._lock, self._db:
            self._db.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE batch_id = ?", (batch_id,))

    def interrupt_active(self) -> list[str]:
        """Batches left running by a server that stopped: marked ``interrupted`` (resume finishes them)."""
        with self._lock, self._db:
            ids = [row[0] for row in self._db.execute(
                f"SELECT batch_id FROM batches WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE)]
            self._db.executemany("UPDATE batches SET status = ? WHERE batch_id = ?",
                                 [(INTERRUPTED, batch_id) for batch_id in ids])
        return ids

    # -- reads ------------------------------------------------------------------------------------------------
    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            data = dict(row)
            counts = self._db.execute(
                "SELECT COUNT(*), SUM(outcome IN ('failed', 'error')), SUM(outcome = 'error') FROM results "
                "WHERE batch_id = ?", (batch_id,)).fetchone()
        data["completed_scenarios"] = counts[0] or 0
        data["failed_scenarios"] = counts[1] or 0  # failed or errored (the reference's count)
        data["errored_scenarios"] = counts[2] or 0
        return data

    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(
                "SELECT batch_id, status, total_scenarios, created_at FROM batches ORDER BY created_at, batch_id")]

    def done_indices(self, batch_id: str) -> set[int]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT idx FROM results WHERE batch_id = ?", (batch_id,))}

    def _chunks(self, query: str, params: tuple[Any, ...]) -> Iterator[list[sqlite3.Row]]:
        """Rows in chunks, on a connection of this reader's own (WAL: it never blocks the writer)."""
        db = self._connect()
        try:
            cursor = db.execute(query, params)
            while rows := cursor.fetchmany(CHUNK):
                yield rows
        finally:
            db.close()

    def scenarios(self, batch_id: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for rows in self._chunks("SELECT idx, data FROM scenarios WHERE batch_id = ? ORDER BY idx", (batch_id,)):
            for row in rows:
                yield row[0], json.loads(row[1])

    def record_chunks(self, batch_id: str) -> Iterator[list[dict[str, Any]]]:
        """The batch's records in scenario order, a chunk at a time."""
        for rows in self._chunks("SELECT record FROM results WHERE batch_id = ? ORDER BY idx", (batch_id,)):
            yield [json.loads(row[0]) for row in rows]
