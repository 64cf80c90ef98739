"""pytest hooks: a thin layer over the engine. State lives in ``config.stash[SESSION_KEY]``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import options
from .errors import BackendMissingError
from .items import ScenarioFile, ScenarioItem, ScenarioRunError, is_scenario_file
from .report_plugin import ReportPlugin, add_report_options, scenario_cost_usd
from .results import ScenarioResult
from .settings import RunSettings, redact_url

if TYPE_CHECKING:  # the runner pulls in openai and diskcache: imported only when a scenario runs
    from .runner import Runner

SESSION_KEY = pytest.StashKey["LlmsimSession"]()

class LlmsimSession:
    """Per-process run state: the runner, submitted conversations and the lookahead over pytest's order."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings: RunSettings | None = None
        self.runner: Runner | None = None
        self._futures: dict[str, concurrent.futures.Future[ScenarioResult]] = {}
        self._consumed: set[str] = set()
        self._messages: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.unconsumed_finished = 0
        self.nextitem: pytest.Item | None = None
        self.lookahead_enabled = not (
            config.getoption("collectonly") or config.getoption("usepdb", False)
            or config.getoption("trace", False) or config.getoption("setuponly", False)
            or config.getoption("setupplan", False)
        )

    # -- start-up -------------------------------------------------------------------------------------------
    def ensure_runner(self) -> Runner:
        if self.runner is None:
            self.settings = self._resolve_settings()
            from .runner import Runner

            self.runner = Runner(self.settings, rpm=options.rpm(self.config))
        return self.runner

    def _resolve_settings(self) -> RunSettings:
        base_url, api_key = options.configured_endpoint(self.config)
        if base_url or api_key:
            return options.build_settings(self.config, base_url=base_url, api_key=api_key)
        return self._local_settings()

    def _local_settings(self) -> RunSettings:
        """No endpoint configured: the local GGUF model serves every role. Its server starts on the first
        uncached call (a replay starts no model) and is shared by every process of this session."""
        from . import local_model

        model_path = local_model_path(self.config)
        config = self.config

        def connect() -> str:
            if not local_model.local_backend_available():
                raise BackendMissingError(local_model.missing_backend_message())
            if model_path is None or not model_path.is_file():
                raise BackendMissingError(f"local model {model_path or '(bundled SmolLM2)'} not found; "
                                          + local_model.missing_backend_message())
            server = local_model.ensure_local_server(model_path, local_state_dir(config), controller_pid(config),
                                                     log=self._say)
            return server.base_url

        name = model_path.name if model_path is not None else "missing-model"
        return options.build_settings(
            self.config, base_url=None, api_key="", endpoint_id=f"local:{name}",
            default_model=local_model.LOCAL_MODEL_NAME, local=True, connect=connect,
            description=f"local model {model_path}",
        )

    def _say(self, line: str) -> None:
        """Queue a line for the terminal; may be called from the engine's threads."""
        self._messages.put(line)

    def flush_messages(self) -> None:
        """Print queued lines past output capturing (main thread only; workers' lines go nowhere)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        while not self._messages.empty():
            line = self._messages.get()
            if reporter is None or hasattr(self.config, "workerinput"):
                continue
            with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
                reporter.ensure_newline()
                reporter.write_line(line)

    # -- lookahead ------------------------------------------------------------------------------------------
    def _eligible(self, item: pytest.Item) -> bool:
        if not isinstance(item, ScenarioItem) or item.scenario is None:
            return False
        if item.get_closest_marker("skip") or item.get_closest_marker("skipif"):
            return False
        xfail = item.get_closest_marker("xfail")
        return not (xfail and xfail.kwargs.get("run") is False and not self.config.getoption("runxfail"))

    def _submit(self, item: ScenarioItem) -> concurrent.futures.Future[ScenarioResult]:
        assert item.scenario is not None
        runner = self.ensure_runner()
        from .runner import ScenarioJob

        future = runner.submit(ScenarioJob(item.nodeid, str(item.path), item.scenario))
        self._futures[item.nodeid] = future
        return future

    def prefetch(self, upcoming: list[pytest.Item]) -> None:
        """Start conversations for the next items pytest will run, up to the lookahead window."""
        if not self.lookahead_enabled or self.settings is None:
            return
        window = 2 * self.settings.concurrency
        in_window = 0
        for item in upcoming:
            if in_window >= window:
                break
            if not self._eligible(item):
                continue
            in_window += 1
            if item.nodeid not in self._futures:
                self._submit(item)  # type: ignore[arg-type]

    def top_up(self, item: ScenarioItem) -> None:
        """Called while pytest waits on ``item``: start newly queued items (xdist refills the queue meanwhile)."""
        self.flush_messages()
        if hasattr(self.config, "workerinput"):
            self.prefetch(upcoming_items(item, self.nextitem))

    def future_for(self, item: ScenarioItem) -> concurrent.futures.Future[ScenarioResult]:
        """The item's conversation; a fresh one if none was started or it was already consumed (reruns)."""
        future = self._futures.get(item.nodeid)
        if future is None or item.nodeid in self._consumed:
            self._consumed.discard(item.nodeid)
            future = self._submit(item)
        return future

    def consumed(self, item: ScenarioItem) -> None:
        self._consumed.add(item.nodeid)
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

    def close(self) -> None:
        self.cancel_unconsumed()
        if self.runner is not None:
            self.runner.close()
            self.runner = None

# -- hooks --------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)
    add_report_options(parser)

def controller_pid(config: pytest.Config) -> int:
    """pid of the process that owns the session (the xdist controller, or this process)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "llmsim_controller_pid" in workerinput:
        return int(workerinput["llmsim_controller_pid"])
    return os.getpid()


def local_model_path(config: pytest.Config) -> Path | None:
    from . import local_model

    raw = options.option_or_ini(config, "llmsim_local_model")
    return options.resolve_path(config, raw) if raw else local_model.find_bundled_model()


def local_state_dir(config: pytest.Config) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-llmsim-{controller_pid(config)}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmsim: a conversation scenario collected by pytest-llmsim")
    options.record_mode(config)  # fail fast on a bad ini value
    config.stash[SESSION_KEY] = LlmsimSession(config)
    if config.pluginmanager.hasplugin("xdist"):
        from .xdist_support import XdistHooks

        slots = options.effective_concurrency(config)
        config.pluginmanager.register(XdistHooks(2 * slots + 1, slots), "llmsim-xdist")
    if not hasattr(config, "workerinput"):  # summary, gates and exports are computed once, on the controller
        config.pluginmanager.register(ReportPlugin(config), ReportPlugin.name)

def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_scenario_file(parent.config, file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None

def pytest_report_header(config: pytest.Config) -> str:
    mode = options.record_mode(config)
    base_url, api_key = options.configured_endpoint(config)
    if base_url or api_key:
        endpoint = redact_url(base_url or "https://api.openai.com/v1")
    else:
        endpoint = f"local model {local_model_path(config) or '(not installed)'} (started on the first uncached call)"
    cache_dir = options.resolve_path(config, options.option_or_ini(config, "llmsim_cache_dir"))
    seed = options.option_or_ini(config, "llmsim_seed")
    concurrency = options.effective_concurrency(config)
    return (f"llmsim: record mode={mode.value}, cache={cache_dir}, seed={seed}, concurrency={concurrency}, "
            f"http={options.http_backend_in_use(config, base_url)}, endpoint={endpoint}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    session = item.config.stash[SESSION_KEY]
    if isinstance(item, ScenarioItem) and item.scenario is not None and session._eligible(item):
        session.ensure_runner()
        upcoming = upcoming_items(item, nextitem)
        session.nextitem = nextitem
        session.prefetch(upcoming)
    result = yield
    if item.session.shouldfail or item.session.shouldstop:
        session.cancel_unconsumed()
    return result

def upcoming_items(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.Item]:
    """This item and the ones pytest will run after it in this process."""
    items = item.session.items
    if hasattr(item.config, "workerinput"):
        from .xdist_support import queued_indices

        queued = queued_indices(item.config) or []
        following = [nextitem] if nextitem is not None else []
        return [item, *following, *(items[i] for i in queued if 0 <= i < len(items))]
    try:
        index = items.index(item)
    except ValueError:
        return [item]
    return items[index:]

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if (isinstance(item, ScenarioItem) and report.when == "setup" and call.excinfo is not None
            and isinstance(call.excinfo.value, ScenarioRunError)):
        # pytest formats setup errors as tracebacks; a scenario error is a message, not a bug.
        report.longrepr = item.repr_failure(call.excinfo)
    if isinstance(item, ScenarioItem) and item.result is not None:
        decided = "setup" if item.result.status == "error" else "call"
        if report.when == "setup":
            # Setup waited for a conversation that ran in the background; that time is the conversation's,
            # reported once below, not the item's own setup work.
            report.duration = max(0.0, report.duration - item.conversation_wait_s)
        if report.when == decided:
            result = item.result
            report.llmsim = result.to_dict()  # type: ignore[attr-defined]
            # The phase that carries the verdict reports the conversation's own wall time, so --durations,
            # JUnit and pytest-html show how long each conversation took, not how long its item waited.
            report.duration = result.duration_seconds
            for name, value in (
                ("score", result.score), ("min_score", result.min_score), ("comment", result.comment),
                ("turns", result.total_turns), ("ended_by", result.ended_by),
                ("prompt_tokens", result.prompt_tokens), ("completion_tokens", result.completion_tokens),
                ("cost_usd", scenario_cost_usd(item.config, report.llmsim)),  # type: ignore[attr-defined]
                ("cached", result.fully_cached),
            ):
                # The current report gets a copy; the item's list reaches the teardown report (which
                # junitxml writes properties from) and every later report of this item.
                report.user_properties.append((name, value))
                item.user_properties.append((name, value))
    return report

def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    data = getattr(report, "llmsim", None)
    if data is None or report.when != "call" or hasattr(report, "wasxfail") or data.get("score") is None:
        return None
    word = f"{report.outcome.upper()} (score {data['score']}, min {data['min_score']})"
    letter = "." if report.passed else "F"
    return report.outcome, letter, (word, {"green": report.passed, "red": report.failed})

def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    llmsim = terminalreporter.config.stash.get(SESSION_KEY, None)
    if llmsim is not None and llmsim.unconsumed_finished:
        terminalreporter.write_line(
            f"llmsim: the run stopped early; {llmsim.unconsumed_finished} conversation(s) that had already "
            "finished ahead of their items were not reported (their LLM calls are cached and replay next run)",
            yellow=True,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY].close()

def pytest_unconfigure(config: pytest.Config) -> None:
    llmsim = config.stash.get(SESSION_KEY, None)
    if llmsim is not None:
        llmsim.close()
    state_dir = local_state_dir(config)
    if not hasattr(config, "workerinput") and state_dir.exists():
        from . import local_model

        local_model.stop_local_server(state_dir)
