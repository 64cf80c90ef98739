"""pytest-xdist integration: share the controller's pid, keep each worker's queue deep, split the suite evenly.

xdist's stock ``load`` scheduler refills a worker only when its queue is nearly empty and, after a test that
took >= 0.1 s, waits until fewer than two are pending. With conversations that take seconds, a worker would
then know only one or two upcoming items and could keep only that many conversations in flight. The window
scheduler keeps every worker's queue at ``window`` items (run-ahead + 1) while items remain, so each worker can
start its next conversations early.

Which items a worker gets: the collection is split up front into one contiguous, equal share per worker, and a
worker refills its window from its own share first. A worker whose share is used up steals unsent items from
the end of the largest remaining share. Handing items out strictly in completion order instead (stock ``load``)
leaves uniform suites unevenly split (101/99 of 200), and the worker with the extra item runs one more wave of
conversations alone; stealing keeps the dynamic balance that uneven real conversations need.

Reading a worker's queue touches xdist internals (``WorkerInteractor.torun``, a lock-guarded deque since 3.7);
it is feature-detected and falls back to pytest's ``nextitem`` only.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from .scenario_paths import is_scenario_nodeid

try:
    from xdist.scheduler import LoadScheduling
except ImportError:  # pragma: no cover - module only imported when xdist is present
    LoadScheduling = object  # type: ignore[assignment,misc]


class WindowScheduling(LoadScheduling):  # type: ignore[misc,valid-type]
    """``--dist load`` with every worker's queue kept ``window`` deep (falls back to stock for plain suites)."""

    def __init__(self, config: pytest.Config, log: Any = None, *, window: int, slots: int) -> None:
        super().__init__(config, log)
        self.window = max(2, window)
        self.slots = max(1, min(slots, self.window))
        self._windowed: bool | None = None
        self._owner: dict[int, Any] = {}

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
        self._owner = split_evenly(len(self.collection), self.nodes)
        for node in self.nodes:
            self._fill(node)
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
            self._fill(node)
        else:
            node.shutdown()
        return None

    def _fill(self, node: Any) -> None:
        """Top ``node``'s queue up to the window: own share first, then orphans, then steal from the largest."""
        queued = len(self.node2pending[node])
        if queued >= self.window or not self.pending:
            return
        # Stealing only fills idle conversation slots (fewer queued items than slots), and only takes from
        # workers whose own queue is full: a stolen item must start at once here, not wait in this queue while
        # its own worker would have run it just as soon (at the first fill, no queue is full yet).
        full = {other for other, queue in self.node2pending.items() if len(queue) >= self.window}
        chosen = pick_items(self.pending, self._owner, node, set(self.node2pending), stealable_from=full,
                            own_count=self.window - queued, steal_count=self.slots - queued)
        if not chosen:
            return
        taken = set(chosen)
        self.pending[:] = [index for index in self.pending if index not in taken]
        self.node2pending[node].extend(chosen)
        node.send_runtest_some(chosen)


def split_evenly(count: int, nodes: list[Any]) -> dict[int, Any]:
    """Item index -> the node whose share it is: contiguous shares whose sizes differ by at most one."""
    owner: dict[int, Any] = {}
    start = 0
    for position, node in enumerate(nodes):
        size = count // len(nodes) + (1 if position < count % len(nodes) else 0)
        for index in range(start, start + size):
            owner[index] = node
        start += size
    return owner


def pick_items(pending: list[int], owner: dict[int, Any], node: Any, live_nodes: set[Any], *,
               stealable_from: set[Any], own_count: int, steal_count: int) -> list[int]:
    """Choose unsent items for ``node``: up to ``own_count`` of its own, up to ``steal_count`` in all if stealing.

    Its own share in order comes first; then items whose owner is gone (a crashed worker's re-queued items);
    then items stolen one by one from the end of whichever share of ``stealable_from`` has the most unsent
    items left.
    """
    own = [index for index in pending if owner.get(index) is node]
    chosen = own[:own_count]
    if len(chosen) < own_count:
        orphans = [index for index in pending if owner.get(index) not in live_nodes]
        chosen += orphans[: own_count - len(chosen)]
    count = steal_count
    if len(chosen) < count:
        shares: dict[Any, list[int]] = {}
        picked = set(chosen)
        for index in pending:
            if index not in picked and owner.get(index) in live_nodes and owner[index] in stealable_from:
                shares.setdefault(owner[index], []).append(index)
        while len(chosen) < count and shares:
            victim = max(shares, key=lambda other: len(shares[other]))
            chosen.append(shares[victim].pop())
            if not shares[victim]:
                del shares[victim]
    return chosen


class XdistHooks:
    """Registered only when pytest-xdist is loaded."""

    def __init__(self, window: int, slots: int) -> None:
        self.window = window
        self.slots = slots

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llmsim_controller_pid"] = os.getpid()

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load":
            return None
        return WindowScheduling(config, log, window=self.window, slots=self.slots)


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
