"""Batches of the service: launched, run, cancelled and resumed over one shared ``BatchRunner`` and the store.

Every batch runs in a thread of its own feeding the shared runner (one concurrency limit and one 429 limiter for
all); each finished scenario is written to SQLite at once, so a server killed mid-batch loses nothing finished.
On start, batches left running are marked ``interrupted``; ``resume`` runs only their scenarios without a result.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_llmsim.apps import batch
from pytest_llmsim.apps.service import store as states
from pytest_llmsim.apps.service.logs import log, log_record
from pytest_llmsim.apps.service.store import Store
from pytest_llmsim.apps.service.webhook import Webhook
from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.llm.pricing import load_price_table
from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.reporting.summary import missed_gates, summarize, summary_dict


class BatchManager:
    def __init__(self, resolved: ResolvedOptions, db_path: Path) -> None:
        self.resolved = resolved
        self.store = Store(db_path)
        self.prices = load_price_table(resolved["llmsim_prices"])
        self.gates = batch.gates_of(resolved)
        settings = batch.engine_settings(resolved, resolved.ini_dir, recordings=False,
                                         log=lambda line: log("app", logging.INFO, line))
        self.runner = batch.BatchRunner(settings, rpm=resolved["llmsim_rpm"])
        url = resolved["llmsim_webhook_url"]
        self.webhook = Webhook(url, timeout=resolved["llmsim_webhook_timeout"],
                               retries=resolved["llmsim_webhook_retries"]) if url else None
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        for batch_id in self.store.interrupt_active():
            log("app", logging.WARNING, "batch interrupted by a server stop; POST /api/batches/{id}/resume "
                "finishes it", batch_id=batch_id)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def launch(self, scenarios: Sequence[Scenario]) -> tuple[str, int]:
        batch_id = str(uuid.uuid4())
        rows = (scenario.model_dump(mode="json", exclude_unset=True) for scenario in scenarios)
        total = self.store.create_batch(batch_id, str(uuid.uuid4()), rows)
        log("app", logging.INFO, "batch launched", batch_id=batch_id, total_scenarios=total)
        self._start(batch_id)
        return batch_id, total

    def resume(self, batch_id: str) -> int:
        """Run the scenarios of an interrupted (or cancelled) batch that have no result; their count."""
        done = self.store.done_indices(batch_id)
        info = self.store.batch(batch_id)
        assert info is not None
        self._start(batch_id)
        log("app", logging.INFO, "batch resumed", batch_id=batch_id, finished=len(done))
        return int(info["total_scenarios"]) - len(done)

    def cancel(self, batch_id: str) -> bool:
        with self._lock:
            event = self._cancel.get(batch_id)
        if event is None:
            return False
        event.set()
        return True

    def running(self, batch_id: str) -> bool:
        with self._lock:
            thread = self._threads.get(batch_id)
        return thread is not None and thread.is_alive()

    def _start(self, batch_id: str) -> None:
        with self._lock:
            event = self._cancel[batch_id] = threading.Event()
            self.store.set_status(batch_id, states.RUNNING)
            thread = threading.Thread(target=self._drive, args=(batch_id, event), name=f"llmsim-batch-{batch_id[:8]}",
                                      daemon=True)
            self._threads[batch_id] = thread
        thread.start()

    def _items(self, batch_id: str, done: set[int]) -> Iterator[batch.BatchItem]:
        """The batch's unfinished scenarios, read from the store as the runner needs them."""
        for index, data in self.store.scenarios(batch_id):
            if index not in done:
                scenario = Scenario.model_validate(data)
                yield batch.BatchItem(index, scenario.name, f"batch-{batch_id}::{scenario.name}", "", scenario)

    def _drive(self, batch_id: str, cancel: threading.Event) -> None:
        info = self.store.batch(batch_id)
        assert info is not None
        run_id = str(info["run_id"])

        def on_result(item: batch.BatchItem, record: ScenarioRecord) -> None:
            self.store.add_result(batch_id, item.index, str(record.outcome), record.to_dict())
            log_record(batch_id, record)

        def on_start(item: batch.BatchItem) -> None:
            if self.webhook is not None:
                self.webhook.announce(session_id=str(uuid.uuid4()), batch_id=batch_id, scenario=item.name,
                                      on_done=lambda ok: self.store.count_webhook(batch_id, ok))

        try:
            finished = batch.run_batch(self.runner, self._items(batch_id, self.store.done_indices(batch_id)),
                                       prices=self.prices, run_id=run_id, on_result=on_result, on_start=on_start,
                                       cancel=cancel)
        except Exception as exc:  # the store or a bug: the batch stays resumable
            log("app", logging.ERROR, "batch stopped by an internal error", batch_id=batch_id,
                error=f"{type(exc).__name__}: {exc}")
            self.store.set_status(batch_id, states.INTERRUPTED)
            return
        if not finished:
            self.store.set_status(batch_id, states.CANCELLED)
            log("app", logging.INFO, "batch cancelled", batch_id=batch_id)
            return
        self.store.set_summary(batch_id, self.summary(batch_id))
        self.store.set_status(batch_id, states.COMPLETED)
        counts = self.store.batch(batch_id) or {}
        log("app", logging.INFO, "batch completed", batch_id=batch_id,
            failed_scenarios=counts.get("failed_scenarios"), errored_scenarios=counts.get("errored_scenarios"))

    # -- reports ----------------------------------------------------------------------------------------------
    def summary(self, batch_id: str) -> dict[str, Any]:
        """The summary as pytest's exports write it (``summary.summary_dict``), over the results so far."""
        records = [ScenarioRecord.from_dict(row) for chunk in self.store.record_chunks(batch_id) for row in chunk]
        info = self.store.batch(batch_id) or {}
        unfinished = int(info.get("total_scenarios", 0)) - len(records)
        result = summarize(records, interrupted=info.get("status") == states.INTERRUPTED, unfinished=unfinished)
        return summary_dict(result, self.gates, missed_gates(result, self.gates))

    def close(self, timeout: float = 5.0) -> None:
        """Stop: running batches are cancelled and marked ``interrupted`` (resumable), the runner closed."""
        with self._lock:
            active = [batch_id for batch_id, thread in self._threads.items() if thread.is_alive()]
            for batch_id in active:
                self._cancel[batch_id].set()
        for batch_id in active:
            self._threads[batch_id].join(timeout)
            self.store.set_status(batch_id, states.INTERRUPTED)
        if self.webhook is not None:
            self.webhook.close()
        self.runner.close()
        batch.stop_local_model()
        self.store.close()
