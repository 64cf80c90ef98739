"""The session webhook: each conversation's start announced with a POST, off the engine's loop.

Posts run on a small thread pool with a per-attempt timeout and a bounded number of retries (with backoff); a
failure is logged and counted (``on_done(False)``), never raised: a dead webhook neither fails nor slows a batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from pytest_llmsim.apps.service.logs import log
from pytest_llmsim.apps.service.store import now


class Webhook:
    def __init__(self, url: str, *, timeout: float, retries: int, workers: int = 4) -> None:
        import httpx

        self.url = url
        self.retries = retries
        self._client = httpx.Client(timeout=timeout)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmsim-webhook")

    def announce(self, *, session_id: str, batch_id: str, scenario: str,
                 on_done: Callable[[bool], None]) -> None:
        payload = {"session_id": session_id, "batch_id": batch_id, "scenario": scenario, "timestamp": now()}
        self._pool.submit(self._post, payload, on_done)

    def _post(self, payload: dict[str, Any], on_done: Callable[[bool], None]) -> None:
        import httpx

        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 400:
                on_done(True)
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the webhook refuses this payload: retrying will not help
        log("app", logging.WARNING, "webhook failed", batch_id=payload["batch_id"], scenario=payload["scenario"],
            session_id=payload["session_id"], attempts=attempt + 1, error=problem)
        on_done(False)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
