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

A worker whose process dies (an agent calling ``os._exit``, a fatal signal): xdist blames the item the worker was
running (the first one it had pending) and re-queues the rest. With the run-ahead that item is often innocent,
waiting on its finished conversation while another item's agent killed the process. So each worker keeps a
journal of the conversations it has in flight (``inflight/<worker id>.log``: ``+nodeid`` when one starts,
``-nodeid`` when it ends), and ``WindowScheduling.remove_node`` reads the dead worker's journal:

* one conversation was in flight (or only a non-scenario item could have done it): that item is the one xdist
  reports as crashed, as an error saying its code ended the worker process (``pytest_handlecrashitem``); every
  other pending item runs again elsewhere;
* several were in flight: none can be blamed. Every pending item runs again, and the suspects are *isolated*
  (listed in ``isolate.txt``): a worker runs an isolated item's conversation with no other one beside it, so if it
  kills its worker again, it is the only one in flight and is reported alone;
* none was in flight (the process died outside any conversation): xdist's own report stands.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.model.scenario_paths import is_scenario_nodeid

try:
    from xdist.scheduler import LoadScheduling
except ImportError:  # pragma: no cover - module only imported when xdist is present
    LoadScheduling = object


class WindowScheduling(LoadScheduling):  # type: ignore[misc]  # xdist is untyped: an Any base
    """``--dist load`` with every worker's queue kept ``window`` deep (falls back to stock for plain suites)."""

    collection: list[str] | None  # LoadScheduling's: the collected node ids once every worker has collected

    def __init__(self, config: pytest.Config, log: Any = None, *, window: int, slots: int) -> None:
        super().__init__(config, log)
        self.window = max(2, window)
        self.slots = max(1, min(slots, self.window))
        self._windowed: bool | None = None
        self._owner: dict[int, Any] = {}
        self.state_dir = local_state_dir(config)
        self.isolated: set[str] = set()  # suspects of a worker's death, each run with no other conversation
        self.culprits: set[str] = set()  # items whose conversation alone was running when their worker died

    def _use_window(self) -> bool:
        if self._windowed is None:
            collection = self.collection or []
            self._windowed = any(is_scenario_nodeid(nodeid) for nodeid in collection)
        return self._windowed

    def schedule(self) -> None:
        if self.collection is not None or not self.collection_is_completed:
            super().schedule()
            return None
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return None
        self.collection = next(iter(self.node2collection.values()))
        if not self._use_window():
            self.collection = None
            super().schedule()
            return None
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

    def remove_node(self, node: Any) -> str | None:
        """xdist's ``remove_node``, but a crashed worker's blame goes to the conversation that was running in it
        (see the module's docstring); the other pending items are re-queued."""
        pending = self.node2pending.get(node)
        if not pending or not self._use_window() or self.collection is None:
            return super().remove_node(node)  # type: ignore[no-any-return]  # xdist is untyped
        in_flight = read_in_flight(journal_path(self.state_dir, _worker_id(node)))
        suspects = [index for index in pending if self.collection[index] in in_flight]
        if not is_scenario_nodeid(self.collection[pending[0]]) and pending[0] not in suspects:
            suspects.insert(0, pending[0])  # a plain test may have done it as well as a conversation
        if not suspects:
            return super().remove_node(node)  # type: ignore[no-any-return]  # xdist is untyped
        del self.node2pending[node]
        crashed: str | None = None
        if len(suspects) == 1:
            crashed = str(self.collection[suspects[0]])
            self.culprits.add(crashed)
            self.pending.extend(index for index in pending if index != suspects[0])
        else:
            self.isolated.update(self.collection[index] for index in suspects)
            write_isolated(self.state_dir, self.isolated)
            self.pending.extend(pending)
        for other in self.node2pending:
            self.check_schedule(other)
        return crashed

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        if not self._use_window():
            super().check_schedule(node, duration)
            return None
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
        self.scheduler: WindowScheduling | None = None

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llmsim_controller_pid"] = os.getpid()

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load":
            return None
        self.scheduler = WindowScheduling(config, log, window=self.window, slots=self.slots)
        return self.scheduler

    @pytest.hookimpl(tryfirst=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> bool | None:
        """The item whose conversation alone was running when its worker died: an error (not a failure) that
        says its code ended the process, with an error record for the reports."""
        if not isinstance(sched, WindowScheduling) or crashitem not in sched.culprits:
            return None
        from pytest_llmsim.errors import ErrorKind
        from pytest_llmsim.model.results import ScenarioResult, Status

        worker = _worker_id(getattr(report, "node", None)) or "?"
        message = (f"llmsim: this scenario's agent (or code it called) ended its xdist worker process {worker}: "
                   "its conversation was the only one running when the process died (os._exit, a fatal signal, "
                   "a crash of the interpreter). The other scenarios that worker had started were run again.")
        path, _, name = crashitem.rpartition("::")
        report.when = "setup"  # an error of the item, as pytest words it
        report.longrepr = message
        report.location = (path, None, f"scenario: {name}")
        report.llmsim = ScenarioResult(  # type: ignore[attr-defined]  # plugin data rides on the report
            scenario=name, nodeid=crashitem, source=path, status=Status.ERROR, min_score=None,
            error_kind=ErrorKind.CRASHED, error_message=message).to_dict()
        return True

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if not hasattr(config, "workerinput"):
            remove_crash_files(local_state_dir(config))


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


def controller_pid(config: pytest.Config) -> int:
    """pid of the process that owns the session (the xdist controller, or this process)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "llmsim_controller_pid" in workerinput:
        return int(workerinput["llmsim_controller_pid"])
    return os.getpid()


def local_state_dir(config: pytest.Config) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-llmsim-{controller_pid(config)}"


# -- the in-flight journal and the isolated items (see the module's docstring) ------------------------------------
def _worker_id(node: Any) -> str:
    workerinput = getattr(node, "workerinput", None)
    return str(workerinput.get("workerid", "")) if isinstance(workerinput, dict) else ""


def journal_path(state_dir: Path, worker_id: str) -> Path:
    return state_dir / "inflight" / f"{worker_id or 'worker'}.log"


def isolated_path(state_dir: Path) -> Path:
    return state_dir / "inflight" / "isolate.txt"


def read_in_flight(path: Path) -> set[str]:
    """The node ids a journal shows started and not ended (empty when there is none)."""
    counts: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line[:1] in ("+", "-"):
            counts[line[1:]] = counts.get(line[1:], 0) + (1 if line[0] == "+" else -1)
    return {nodeid for nodeid, count in counts.items() if count > 0}


def write_isolated(state_dir: Path, nodeids: set[str]) -> None:
    from pytest_llmsim.reporting.exports import atomic_write_text

    try:
        atomic_write_text(isolated_path(state_dir), "".join(f"{nodeid}\n" for nodeid in sorted(nodeids)))
    except OSError:  # the workers then run them with the others: the blame may be shared, never lost
        pass


def remove_crash_files(state_dir: Path) -> None:
    folder = state_dir / "inflight"
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        try:
            path.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
        state_dir.rmdir()  # only when nothing else (the local model, rate limits) uses it
    except OSError:
        pass


class Journal:
    """A worker's in-flight journal: one ``+nodeid`` / ``-nodeid`` line per start and end, appended with one
    ``write`` each (the engine's threads end conversations), so what a dead process had in flight is on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, sign: str, nodeid: str) -> None:
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
            os.write(self._fd, f"{sign}{nodeid}\n".encode("utf-8", "replace"))
        except OSError:  # no journal: a crash is then blamed as xdist does
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                self.path.unlink()
            except OSError:
                pass


class IsolatedItems:
    """The isolated node ids the controller listed, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self.nodeids: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        try:
            stat = os.stat(self.path)
        except OSError:
            return self.nodeids
        key = (stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            try:
                self.nodeids = frozenset(self.path.read_text(encoding="utf-8").splitlines())
                self._key = key
            except OSError:
                pass
        return self.nodeids
