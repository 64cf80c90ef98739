"""Per-process run state of a pytest session: resolved options, the runner, and the run-ahead over pytest's order.

pytest runs one item at a time; conversations take seconds each. ``LlmsimSession`` starts the conversations of
the next items (a window of ``2 x concurrency``) in the runner's background loop while pytest waits on the
current one, so many are in flight while every item still reports in pytest's order. Under xdist a worker's
upcoming items are its queue (``xdist_support.queued_indices``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import queue
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.config import options
from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import CacheError
from pytest_llmsim.model.results import ScenarioResult
from pytest_llmsim.model.settings import RunSettings
from pytest_llmsim.plugin.interrupts import InterruptGuard
from pytest_llmsim.plugin.xdist import controller_pid, local_state_dir

if TYPE_CHECKING:  # the runner pulls in openai and diskcache: imported only when a scenario runs
    from pytest_llmsim.engine.runner import Runner
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.plugin.xdist import IsolatedItems, Journal

_ELIGIBLE_KEY = pytest.StashKey[bool]()
SESSION_KEY = pytest.StashKey["LlmsimSession"]()


def worker_count(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    return int(workerinput.get("workercount", 1)) if workerinput else 1


def local_model_path(resolved: ResolvedOptions) -> Path | None:
    from pytest_llmsim.llm import local_model

    configured: Path | None = resolved["llmsim_local_model"]
    return configured if configured is not None else local_model.find_bundled_model()


class LlmsimSession:
    """Per-process run state: the runner, submitted conversations and the lookahead over pytest's order."""

    def __init__(self, config: pytest.Config, resolved: ResolvedOptions) -> None:
        self.config = config
        self.options = resolved
        self.settings: RunSettings | None = None
        self.runner: Runner | None = None
        self._futures: dict[str, concurrent.futures.Future[ScenarioResult]] = {}
        self._consumed: set[str] = set()
        self.interrupts = InterruptGuard(sigterm=not hasattr(config, "workerinput"))  # workers: see interrupts.py
        self._messages: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.unconsumed_finished = 0
        self.notes: list[str] = []  # lines for the terminal summary, gathered when the runner closes
        self.limit_stats: dict[str, object] | None = None  # the rate limiter's figures, kept when the runner closes
        self.nextitem: pytest.Item | None = None
        self._journal: Journal | None = None  # xdist worker: the conversations in flight, for a crash's blame
        self._isolated: IsolatedItems | None = None  # xdist worker: items whose conversation must run alone
        if hasattr(config, "workerinput"):
            from pytest_llmsim.plugin.xdist import IsolatedItems, Journal, isolated_path, journal_path

            state = local_state_dir(config)
            self._journal = Journal(journal_path(state, str(config.workerinput.get("workerid", ""))))
            self._isolated = IsolatedItems(isolated_path(state))
        self.lookahead_enabled = not (
            config.getoption("collectonly") or config.getoption("usepdb", False)
            or config.getoption("trace", False) or config.getoption("setuponly", False)
            or config.getoption("setupplan", False)
        )

    # -- start-up -------------------------------------------------------------------------------------------
    def ensure_runner(self) -> Runner:
        """The runner (created on first use). A cache that cannot be opened is a usage error: one line that
        names the directory and what to do, instead of an error on every item."""
        if self.runner is None:
            self.settings = self.build_settings()
            from pytest_llmsim.engine.runner import Runner

            try:
                workers = worker_count(self.config)
                self.runner = Runner(self.settings, rpm=self.options["llmsim_rpm"], tpm=self.options["llmsim_tpm"],
                                     shared_dir=local_state_dir(self.config) / "rate-limits" if workers > 1 else None,
                                     workers=workers)
            except CacheError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self.runner

    def build_settings(self) -> RunSettings:
        settings = (options.build_settings(self.options, rootdir=self.config.rootpath) if not self.options.local
                    else self._local_settings())
        return dataclasses.replace(settings, metrics=metric_registry(self.config))

    def _local_settings(self) -> RunSettings:
        """No endpoint configured: the local GGUF model serves every role. Its server starts on the first
        uncached call (a replay starts no model) and is shared by every process of this session."""
        from pytest_llmsim.apps.batch import local_settings

        return local_settings(self.options, self.config.rootpath, local_state_dir(self.config),
                              controller_pid(self.config), log=self._say)

    def _say(self, line: str) -> None:
        """Queue a line for the terminal; may be called from the engine's threads."""
        self._messages.put(line)

    def flush_messages(self) -> None:
        """Print queued lines past output capturing (main thread only). An xdist worker keeps them: they go to
        the controller on the worker's next test report (``take_messages``), which prints them."""
        if hasattr(self.config, "workerinput"):
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        lines = self.take_messages()
        if lines and reporter is not None:
            with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
                write_lines_apart(reporter, lines)

    def take_messages(self) -> list[str]:
        """The queued lines, removed from the queue."""
        lines = []
        while not self._messages.empty():
            lines.append(self._messages.get())
        return lines

    # -- lookahead ------------------------------------------------------------------------------------------
    def eligible(self, item: pytest.Item) -> bool:
        """A valid scenario item that will run (not skipped, not an xfail with run=False). Scenario items are
        told by their ``llmsim`` marker and ``scenario`` (this module is below items.py: it does not import it).
        Decided once per item: the lookahead asks about each upcoming item many times."""
        known = item.stash.get(_ELIGIBLE_KEY, None)
        if known is None:
            known = item.stash[_ELIGIBLE_KEY] = self._eligible(item)
        return known

    def _eligible(self, item: pytest.Item) -> bool:
        if getattr(item, "scenario", None) is None or item.get_closest_marker("llmsim") is None:
            return False
        if item.get_closest_marker("skip") or item.get_closest_marker("skipif"):
            return False
        xfail = item.get_closest_marker("xfail")
        return not (xfail and xfail.kwargs.get("run") is False and not self.config.getoption("runxfail"))

    def _submit(self, item: pytest.Item) -> concurrent.futures.Future[ScenarioResult]:
        scenario: Scenario | None = getattr(item, "scenario", None)  # a ScenarioItem's (see _eligible)
        assert scenario is not None
        runner = self.ensure_runner()
        from pytest_llmsim.engine.runner import ScenarioJob

        trial = getattr(item, "trial", 0)
        if trial:  # one trial of a scenario: recorded as the scenario's trial, reported as its item
            job = ScenarioJob(item.nodeid.removesuffix(f"[trial-{trial}]"), str(item.path), scenario,
                              report_as=item.nodeid, trial=trial)
        else:
            job = ScenarioJob(item.nodeid, str(item.path), scenario,
                              transcript=getattr(item, "transcript", None))  # a recorded conversation's item
        journal, nodeid = self._journal, item.nodeid
        if journal is not None:
            journal.write("+", nodeid)
        future = runner.submit(job)
        if journal is not None:
            future.add_done_callback(lambda _: journal.write("-", nodeid))
        self._futures[item.nodeid] = future
        return future

    def _isolated_ids(self) -> frozenset[str]:
        return self._isolated.current() if self._isolated is not None else frozenset()

    def _running(self) -> list[concurrent.futures.Future[ScenarioResult]]:
        return [future for future in self._futures.values() if not future.done()]

    def before_item(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """pytest is about to run ``item``: make sure its conversation and the next ones are started."""
        if self.eligible(item):
            self.ensure_runner()
            self.nextitem = nextitem
            self.prefetch(upcoming_items(item, nextitem))

    def prefetch(self, upcoming: Iterable[pytest.Item]) -> None:
        """Start conversations for the next items pytest will run, up to the lookahead window."""
        if not self.lookahead_enabled or self.settings is None:
            return
        window = 2 * self.settings.concurrency
        in_window = 0
        isolated = self._isolated_ids()  # suspects of a worker's death: each runs with no other conversation
        if isolated and any(nodeid in isolated and not future.done() for nodeid, future in self._futures.items()):
            return
        for item in upcoming:
            if in_window >= window:
                break
            if not self.eligible(item):
                continue
            in_window += 1
            if item.nodeid not in self._futures and item.nodeid not in self._consumed:
                if item.nodeid in isolated:
                    if not self._running():
                        self._submit(item)
                    return  # nothing starts beside it, nor before the ones in flight end
                self._submit(item)

    def top_up(self, item: pytest.Item) -> None:
        """Called while pytest waits on ``item``: start newly queued items (xdist refills the queue meanwhile)."""
        self.flush_messages()
        if hasattr(self.config, "workerinput"):
            self.prefetch(upcoming_items(item, self.nextitem))

    def future_for(self, item: pytest.Item) -> concurrent.futures.Future[ScenarioResult]:
        """The item's conversation; a fresh one if none was started or it was already consumed (reruns)."""
        future = self._futures.get(item.nodeid)
        if future is None or item.nodeid in self._consumed:
            self._consumed.discard(item.nodeid)
            if item.nodeid in self._isolated_ids():  # it runs alone: let the conversations in flight end first
                while running := self._running():
                    concurrent.futures.wait(running, timeout=0.2)
                    self.interrupts.check()
            future = self._submit(item)
        return future

    def consumed(self, item: pytest.Item) -> None:
        """``item`` took its result: the future is dropped (the result now travels on the item's report)."""
        self._consumed.add(item.nodeid)
        self._futures.pop(item.nodeid, None)
        self.flush_messages()

    def cancel_unconsumed(self) -> None:
        """Cancel conversations whose items will not run (``-x``, ``--maxfail``, end of session); count the
        ones that had already finished, so the summary can say so."""
        for nodeid in [n for n in self._futures if n not in self._consumed]:
            future = self._futures.pop(nodeid)
            if future.done() and not future.cancelled():
                self.unconsumed_finished += 1
            else:
                future.cancel()

    def rate_limit_stats(self) -> dict[str, object] | None:
        """This process's rate-limit figures (``rate_limits.LimitStats``), None when no runner ran."""
        if self.runner is not None:
            return self.runner.client.limiter.stats.to_dict()
        return self.limit_stats

    def close(self) -> None:
        self.cancel_unconsumed()
        if self.runner is not None:
            self.limit_stats = self.rate_limit_stats()
            workeroutput = getattr(self.config, "workeroutput", None)
            if workeroutput is not None:  # to the controller with the worker's end (``ReportPlugin``)
                workeroutput["llmsim_rate_limits"] = self.limit_stats
            cache = self.runner.client.cache
            if getattr(cache, "unstored", 0):
                self.notes.append(f"llmsim: {cache.unstored} new LLM replies were used but not stored in the cache: "
                                  f"{cache.store_error}")
            self.runner.close()
            self.runner = None
        if self._journal is not None:
            self._journal.close()


def metric_registry(config: pytest.Config) -> dict[str, object]:
    """The metrics ``evaluate:`` can name: built-in, entry points, then every ``pytest_llmsim_metrics`` hook's."""
    from pytest_llmsim.engine.runner import default_registry
    from pytest_llmsim.errors import ConfigError

    try:
        registry = dict(default_registry())
    except ConfigError as exc:
        raise pytest.UsageError(f"llmsim: {exc}") from None
    for found in config.hook.pytest_llmsim_metrics():
        if found is None:
            continue
        pairs = found.items() if isinstance(found, dict) else (
            (getattr(cls, "name", ""), cls) for cls in found) if isinstance(found, list | tuple) else None
        if pairs is None:
            raise pytest.UsageError(f"llmsim: pytest_llmsim_metrics returned a {type(found).__name__}; return a "
                                    "dict of name -> Metric subclass, or a list of Metric subclasses")
        for name, factory in pairs:
            if not isinstance(name, str) or not name or not callable(factory) or (
                    isinstance(factory, type) and not callable(getattr(factory, "evaluate", None))):
                raise pytest.UsageError(f"llmsim: pytest_llmsim_metrics: {name!r} -> {factory!r} is not a metric "
                                        "(a pytest_llmsim.Metric subclass with a name, or a factory)")
            registry[name] = factory
    return registry


def upcoming_items(item: pytest.Item, nextitem: pytest.Item | None) -> Iterable[pytest.Item]:
    """This item and the ones pytest will run after it in this process (lazily: the caller stops at its window)."""
    items = item.session.items
    if hasattr(item.config, "workerinput"):
        from pytest_llmsim.plugin.xdist import queued_indices

        queued = queued_indices(item.config) or []
        following = [nextitem] if nextitem is not None else []
        return itertools.chain([item], following, (items[i] for i in queued if 0 <= i < len(items)))
    index = _position(item, items)
    return [item] if index is None else itertools.islice(items, index, None)


_POSITIONS = pytest.StashKey[tuple[int, int, dict[int, int]]]()


def _position(item: pytest.Item, items: list[pytest.Item]) -> int | None:
    """``items.index(item)`` from a map built once per items list (an index per item was quadratic)."""
    stash = item.session.stash
    for attempt in range(2):
        known = stash.get(_POSITIONS, None)
        if attempt or known is None or known[0] != id(items) or known[1] != len(items):
            known = (id(items), len(items), {id(it): i for i, it in enumerate(items)})
            stash[_POSITIONS] = known
        index = known[2].get(id(item))
        if index is not None and index < len(items) and items[index] is item:
            return index
    return None  # not in the list (rebuilt once in case it was reordered in place)


def write_lines_apart(reporter: Any, lines: Iterable[str]) -> None:
    """Write ``lines`` through pytest's terminal reporter, each on a line of its own, never inside a progress line.

    ``ensure_newline`` ends the current line only after pytest wrote a file name on it; the progress of ``-q`` and
    of xdist without ``-v`` is dots alone (``....``), so a line written after ``ensure_newline`` alone would land
    at the end of the dots (issue 25: the local model's "loading ..." line under ``-n 8``)."""
    reporter.ensure_newline()
    writer: Any = getattr(reporter, "_tw", None)
    if writer is not None and writer.width_of_current_line:
        writer.line()
    for line in lines:
        reporter.write_line(line)
