"""pytest-xdist integration: share the controller's pid, keep each worker's queue deep enough for run-ahead.

xdist's stock ``load`` scheduler refills a worker only when its queue is nearly empty and, after a test that
took >= 0.1 s, waits until fewer than two are pending. With conversations that take seconds, a worker would
then know only one or two upcoming items and could keep only that many conversations in flight. The window
scheduler keeps every worker's queue at ``window`` items (run-ahead + 1) while items remain, so each worker can
start its next conversations early. It changes only *how many* items are queued, never which worker reports
which item or in what order items are reported.

Reading a worker's queue touches xdist internals (``WorkerInteractor.torun``, a lock-guarded deque since 3.7);
it is feature-detected and falls back to pytest's ``nextitem`` only.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest

from .scenario import is_scenario_nodeid

try:
    from xdist.scheduler import LoadScheduling
except ImportError:  # pragma: no cover - module only imported when xdist is present
    LoadScheduling = object  # type: ignore[assignment,misc]



class WindowScheduling(LoadScheduling):  # type: ignore[misc,valid-type]
    """``--dist load`` with every worker's queue kept ``window`` deep (falls back to stock for plain suites)."""

    def __init__(self, config: pytest.Config, log: Any = None, *, window: int) -> None:
        super().__init__(config, log)
        self.window = max(2, window)
        self._windowed: bool | None = None

    def _use_window(self) -> bool:
        if self._windowed is None:
            collection = self.collection or []
            self._windowed = any(is_scenario_nodeid(nodeid) for nodeid in collection)
        return self._windowed

    def schedule(self) -> None:
        if self.collection is not None or not self.collection_is_completed:
            return super().schedule()
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return None
        self.collection = next(iter(self.node2collection.values()))
        if not self._use_window():
            self.collection = None
            return super().schedule()
        self.pending[:] = range(len(self.collection))
        if not self.collection:
            return None
        share = min(self.window, math.ceil(len(self.pending) / len(self.nodes)))
        for node in self.nodes:
            self._send_tests(node, share)
        if not self.pending:
            for node in self.nodes:
                node.shutdown()
        return None

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        if not self._use_window():
            return super().check_schedule(node, duration)
        if node.shutting_down:
            return None
        if self.pending:
            missing = self.window - len(self.node2pending[node])
            if missing > 0:
                self._send_tests(node, missing)
        else:
            node.shutdown()
        return None


class XdistHooks:
    """Registered only when pytest-xdist is loaded."""

    def __init__(self, window: int) -> None:
        self.window = window

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llmsim_controller_pid"] = os.getpid()

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load":
            return None
        return WindowScheduling(config, log, window=self.window)


def queued_indices(config: pytest.Config) -> list[int] | None:
    """Indices (into session.items) queued on this xdist worker, or None if the queue can't be read."""
    for plugin in config.pluginmanager.get_plugins():
        torun = getattr(plugin, "torun", None)
        if torun is None or not hasattr(plugin, "nextitem_index") or not hasattr(torun, "lock"):
            continue
        try:
            with torun.lock() as queue:
                return [i for i in list(queue) if isinstance(i, int)]
        except Exception:
            return None
    return None
