"""pytest hooks: a thin layer over the engine. Run state lives in ``config.stash[SESSION_KEY]`` (session.py)."""

from __future__ import annotations

import gc
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import ScenarioRunError
from pytest_llmsim.model.results import ScenarioResult
from pytest_llmsim.model.settings import redact_url
from pytest_llmsim.plugin import options
from pytest_llmsim.plugin.calibration import CalibrationPlugin
from pytest_llmsim.plugin.fixture import attach_runs, llmsim_fixture  # noqa: F401  (the llmsim fixture, registered with this plugin)
from pytest_llmsim.plugin.gate import register_gate
from pytest_llmsim.plugin.items import (
    ScenarioFile,
    ScenarioItem,
    is_scenario_file,
    note_uncollected_scenario_file,
    uncollected_scenarios_line,
)
from pytest_llmsim.plugin.reporting import ReportPlugin, junit_properties, scenario_cost_usd
from pytest_llmsim.plugin.session import SESSION_KEY, LlmsimSession, local_model_path, write_lines_apart
from pytest_llmsim.plugin.shards import register_shards
from pytest_llmsim.plugin.transcript_items import is_transcript_path, transcript_collector
from pytest_llmsim.plugin.xdist import local_state_dir

OPTIONS_KEY = pytest.StashKey[ResolvedOptions]()
_FROZEN_KEY = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_llmsim.plugin import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)
    parser.getgroup("llmsim").addoption(
        "--llmsim-init", action="store_true", default=False,
        help="Write a minimal working example (a scenario file, a Python agent and a pytest.ini with its "
             "settings) into the current folder, without overwriting anything, print the next command and exit.")
    parser.getgroup("llmsim").addoption(
        "--llmsim-prune", action="store_true", default=False,
        help="Delete the recordings that no collected scenario uses (listed at the end of every run).")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("llmsim_init", False):
        return None
    from pytest_llmsim.plugin.starter import StarterError, starter_lines, write_starter

    root = config.invocation_params.dir
    try:
        written, skipped = write_starter(root)
    except StarterError as exc:  # checked before anything is written: one line per problem, nothing written
        for problem in exc.problems:
            print(f"llmsim: cannot write the example: {problem}")
        print("llmsim: nothing was written")
        return pytest.ExitCode.USAGE_ERROR
    for line in starter_lines(root, written, skipped):
        print(line)
    return 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmsim: a conversation scenario collected by pytest-llmsim")
    resolved = options.resolve(config)  # every option, once; a bad value is a usage error before anything runs
    config.stash[OPTIONS_KEY] = resolved
    config.stash[SESSION_KEY] = LlmsimSession(config, resolved)
    config.stash[SESSION_KEY].interrupts.install()
    register_gate(config)  # --llmsim-gate=regressions: known failures xfailed, in every process (xdist workers too)
    register_shards(config, resolved)  # --llmsim-shard=K/N: the other shards' items deselected, in every process
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_llmsim.plugin.xdist import XdistHooks

        slots = resolved["llmsim_concurrency"]
        config.pluginmanager.register(XdistHooks(2 * slots + 1, slots), "llmsim-xdist")
    # The plugins talk through explicit calls, wired here: the report plugin asks the calibration for its gate,
    # export section and lines (``ReportContributor``); the recordings line reads the report plugin's records.
    report: ReportPlugin | None = None
    calibration: CalibrationPlugin | None = None
    if not hasattr(config, "workerinput"):  # summary, gates and exports are computed once, on the controller
        calibration = CalibrationPlugin(config)
        report = ReportPlugin(config, contributors=[calibration])
    if resolved["llmsim_recordings"] is not None:
        from pytest_llmsim.plugin.recordings import RecordingInventory

        inventory = RecordingInventory(config, resolved["llmsim_recordings"], config.rootpath,
                                       records=report.records if report is not None else list)
        config.pluginmanager.register(inventory, RecordingInventory.name)
    if report is not None and calibration is not None:
        config.pluginmanager.register(report, ReportPlugin.name)
        config.pluginmanager.register(WorkerLines(config), WorkerLines.name)
        config.pluginmanager.register(calibration, CalibrationPlugin.name)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The recordings directory holds JSON files that are not scenarios (nor tests): never collected."""
    root = config.stash[OPTIONS_KEY]["llmsim_recordings"]
    if root is not None and collection_path == root:
        return True
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_transcript_path(parent.config, file_path):  # a recorded conversation (or its sidecar): not a scenario
        return transcript_collector(parent, file_path)
    if is_scenario_file(parent.config, file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    note_uncollected_scenario_file(parent.config, file_path)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pytest_llmsim.config.options import endpoint_chosen
    from pytest_llmsim.model.settings import RecordMode, resolve_http_backend

    resolved = config.stash[OPTIONS_KEY]
    mode = RecordMode(resolved["llmsim_record_mode"])
    if resolved.local and not mode.may_call_network(endpoint_chosen(resolved)):
        endpoint = "none (replay only: no model is started)"
    elif resolved.local:
        model = local_model_path(resolved)
        endpoint = f"local model {model or '(not installed)'} (started on the first uncached call)"
    else:
        endpoint = redact_url(resolved["llmsim_base_url"] or "https://api.openai.com/v1")
    http = resolve_http_backend(resolved["llmsim_http_backend"], resolved["llmsim_base_url"] or None)
    lines = [f"llmsim: record mode={resolved['llmsim_record_mode']}, cache={resolved['llmsim_cache_dir']}, "
             f"seed={resolved['llmsim_seed']}, concurrency={resolved['llmsim_concurrency']}, http={http}, "
             f"endpoint={endpoint}"]
    from_env = [f"{name} ({source[4:]})" for name, source in resolved.sources.items() if source.startswith("env ")]
    if from_env:  # generic names (MAX_TURNS, CONCURRENCY, ...) may be set in a shell for something else
        lines.append(f"llmsim: from the environment: {', '.join(from_env)}")
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist the controller collects nothing, and a worker that fails at start-up is an INTERNALERROR: so
    the controller checks an existing cache directory itself, before any worker starts."""
    config = session.config
    if hasattr(config, "workerinput") or config.getoption("dist", "no") == "no":
        return
    cache_dir = config.stash[OPTIONS_KEY]["llmsim_cache_dir"]
    if cache_dir is not None and cache_dir.exists():
        from pytest_llmsim.errors import CacheError
        from pytest_llmsim.model.settings import RecordMode
        from pytest_llmsim.replay.cache import CallCache

        try:
            CallCache(cache_dir, RecordMode(config.stash[OPTIONS_KEY]["llmsim_record_mode"])).close()
        except CacheError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Open the cache before the first item runs, so a broken cache is one clear line, not an error per item.

    Then freeze what collection built (items, scenarios, pytest's own objects): it lives until the session ends,
    and otherwise every full garbage collection during the run walks it again; replaying 1000 recorded
    scenarios took 1.2x as long without this. Unfrozen at the end of the session."""
    llmsim = session.config.stash[SESSION_KEY]
    if llmsim.options["llmsim_chats_dir"] is not None:
        _share_chat_names(session.items)
    if llmsim.lookahead_enabled and any(llmsim.eligible(item) for item in session.items):
        llmsim.ensure_runner().know_secrets(item.scenario for item in session.items
                                            if isinstance(item, ScenarioItem) and item.scenario is not None)
        gc.freeze()  # garbage frozen with it is collected after ``gc.unfreeze`` at the session's end
        session.config.stash[_FROZEN_KEY] = True


def _share_chat_names(items: list[pytest.Item]) -> None:
    """Tell the chat files which scenario names several collected scenarios share (each xdist worker collects
    the same items, so all of them name those conversations' files alike)."""
    from pytest_llmsim.reporting.chat_files import share_names

    owners: dict[str, set[str]] = {}
    for item in items:
        scenario = getattr(item, "scenario", None)
        if isinstance(item, ScenarioItem) and scenario is not None:
            trial = getattr(item, "trial", 0)
            owners.setdefault(scenario.name, set()).add(item.nodeid.removesuffix(f"[trial-{trial}]"))
    share_names(name for name, nodeids in owners.items() if len(nodeids) > 1)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    session = item.config.stash[SESSION_KEY]
    session.interrupts.check()  # a Ctrl-C that Python swallowed (see interrupts.py) stops the run here
    session.before_item(item, nextitem)
    result = yield
    if item.session.shouldfail or item.session.shouldstop:
        session.cancel_unconsumed()
    return result


class WorkerLines:
    """On the controller: print the terminal lines an xdist worker sent on a test report (the local model's
    "loading ..." and "ready in ..." lines, queued by the one process that started the server), so they
    appear once, as with -n 0."""

    name = "llmsim-worker-lines"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        lines = getattr(report, "llmsim_lines", None)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if lines and reporter is not None:
            write_lines_apart(reporter, lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if hasattr(item.config, "workerinput"):
        lines = item.config.stash[SESSION_KEY].take_messages()
        if lines:  # a plain attribute crosses xdist with the report; WorkerLines prints it on the controller
            report.llmsim_lines = lines  # type: ignore[attr-defined]  # plugin data rides on the report
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
            report.llmsim = result.to_dict()  # type: ignore[attr-defined]  # plugin data rides on the report
            # The phase that carries the verdict reports the conversation's own wall time, so --durations,
            # JUnit and pytest-html show how long each conversation took, not how long its item waited.
            report.duration = result.duration_seconds
            _result_properties(item, report, result)
        if report.when == "teardown":
            # The record now lives on the report (and in the controller's collector); the item stays in the
            # session's list to the end of the run, so holding the result too would keep every conversation twice.
            item.result = None
    elif report.when == "call":
        runs = attach_runs(item, report)  # tests that used the llmsim fixture
        if runs:
            _result_properties(item, report, runs[0])
    return report


def per_testcase_properties(config: pytest.Config) -> bool:
    """Whether the JUnit XML may carry ``<properties>`` in a ``<testcase>``: only under ``junit_family=xunit1`` (or
    ``legacy``), chosen explicitly. pytest's default, xunit2, follows a schema (junit-10.xsd) without them: there
    the scenario figures go to the test case's ``<system-out>`` instead (``report_plugin.junit_transcript``)."""
    try:
        family = config.getini("junit_family")
    except ValueError:  # junitxml disabled (-p no:junitxml): no XML to write
        return False
    return family in ("xunit1", "legacy")


def _result_properties(item: pytest.Item, report: pytest.TestReport, result: ScenarioResult) -> None:
    """Under ``junit_family=xunit1``: the scenario's JUnit properties (``junit_properties``) as the report's and
    item's ``user_properties``, which junitxml writes as the test case's ``<properties>``. Under xunit2 (the default)
    nothing: the controller writes the same figures into ``<system-out>``; the reports and exports read
    ``report.llmsim``, never ``user_properties``."""
    if not per_testcase_properties(item.config):
        return
    cost = scenario_cost_usd(item.config, report.llmsim)
    for name, value in junit_properties(result, cost):
        # The current report gets a copy; the item's list reaches the teardown report (which
        # junitxml writes properties from) and every later report of this item.
        report.user_properties.append((name, value))
        item.user_properties.append((name, value))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    data = getattr(report, "llmsim", None)
    if data is None or report.when != "call" or hasattr(report, "wasxfail") or data.get("score") is None:
        return None
    from pytest_llmsim.reporting.terminal import progress_word

    letter = "." if report.passed else "F"
    return report.outcome, letter, (progress_word(report.outcome, data), {"green": report.passed, "red": report.failed})

def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    uncollected = uncollected_scenarios_line(terminalreporter.config)
    if uncollected:
        terminalreporter.write_line(uncollected, yellow=True)
    llmsim = terminalreporter.config.stash.get(SESSION_KEY, None)
    for note in llmsim.notes if llmsim is not None else []:
        terminalreporter.write_line(note, yellow=True)
    if llmsim is not None and llmsim.unconsumed_finished:
        terminalreporter.write_line(
            f"llmsim: the run stopped early; {llmsim.unconsumed_finished} conversation(s) that had already "
            "finished ahead of their items were not reported (their LLM calls are cached and replay next run)",
            yellow=True,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY].close()
    if session.config.stash.get(_FROZEN_KEY, False):
        gc.unfreeze()
        session.config.stash[_FROZEN_KEY] = False

def pytest_unconfigure(config: pytest.Config) -> None:
    llmsim = config.stash.get(SESSION_KEY, None)
    if llmsim is not None:
        llmsim.interrupts.uninstall()
        llmsim.close()
    state_dir = local_state_dir(config)
    if not hasattr(config, "workerinput") and state_dir.exists():
        from pytest_llmsim.llm import local_model

        local_model.stop_local_server(state_dir)
