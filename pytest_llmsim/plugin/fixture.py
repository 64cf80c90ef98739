"""The ``llmsim`` fixture: run and judge a conversation from a Python test.

``llmsim.run(**fields)`` (async) and ``llmsim.run_sync(**fields)`` build a ``Scenario`` from the fields a
scenario file accepts (validated the same way: a bad field raises ``ScenarioError`` naming it) plus ``agent=``,
and submit it to the session's runner, so the cache, seeds, record mode and concurrency limits are the ones
scenario items use. They return the ``ScenarioResult``; a conversation that could not be had or judged
(endpoint, agent crash, cache miss, invalid verdict ...) raises ``ScenarioRunError`` carrying the error
message and the result: the test errors instead of comparing a missing score.

Each conversation is kept on the test item (``item.stash[RUNS_KEY]``); ``plugin.pytest_runtest_makereport``
puts them on the test's ``call`` report for the reporting plugin (``attach_runs``) and adds an
``llmsim transcript`` report section per conversation, so a failing assertion shows the chat.

Shape of the records: the first conversation of a test is recorded under the test's node id (its row in the
terminal table, the exports and pytest-html is the test's own); a second and later one under
``<nodeid>[llmsim-2]``, ``<nodeid>[llmsim-3]`` ... (their scenario names default to ``<test name>-2`` ...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pytest_llmsim.errors import ScenarioRunError
from pytest_llmsim.model.results import ERROR, ScenarioResult
from pytest_llmsim.plugin.session import SESSION_KEY

__all__ = ["RUNS_KEY", "LlmsimFixture", "ScenarioRunError", "attach_runs", "llmsim_fixture"]

RUNS_KEY = pytest.StashKey[list[ScenarioResult]]()
_WAIT_SLICE_S = 0.5
_MAX_NAME_CHARS = 200
# Scenario-file fields that belong to pytest's side of a Python test: use markers there.
_NOT_FOR_TESTS = {"skip": "pytest.mark.skip", "xfail": "pytest.mark.xfail", "tags": "pytest markers"}


def _default_name(test_name: str, number: int) -> str:
    """A valid scenario name from the test's name (parametrize ids may hold '/' or '::')."""
    name = "".join(ch if ch.isprintable() else "?" for ch in test_name).replace("::", "_").replace("/", "_")
    suffix = "" if number == 1 else f"-{number}"
    return (name[: _MAX_NAME_CHARS - len(suffix)] or "test") + suffix


class LlmsimFixture:
    """What the ``llmsim`` fixture gives a test: ``run`` (async) and ``run_sync``, and the ``results`` so far."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._count = 0

    @property
    def results(self) -> list[ScenarioResult]:
        """The conversations this test has finished, in order."""
        runs = self._item.stash.get(RUNS_KEY, [])
        return list(runs)

    # -- building the job ------------------------------------------------------------------------------------
    def _job(self, fields: dict[str, Any]) -> Any:
        __tracebackhide__ = True
        from pytest_llmsim.agents.specs import object_agent_spec
        from pytest_llmsim.engine.runner import ScenarioJob
        from pytest_llmsim.errors import ScenarioError
        from pytest_llmsim.model.scenario import AgentSpec, Scenario, _describe_validation_error

        self._count += 1
        number = self._count
        nodeid = self._item.nodeid if number == 1 else f"{self._item.nodeid}[llmsim-{number}]"
        where = f"{nodeid}: llmsim.run()"
        for field, instead in _NOT_FOR_TESTS.items():
            if field in fields:
                raise ScenarioError(f"{where}: field {field!r} is for scenario files; in a Python test use "
                                    f"{instead}")
        data = dict(fields)
        data.setdefault("name", _default_name(self._item.name, number))
        agent = data.get("agent")
        if agent is not None and not isinstance(agent, Mapping | AgentSpec):
            try:
                data["agent"] = object_agent_spec(agent)
            except TypeError as exc:
                raise ScenarioError(f"{where}: field 'agent': {exc}") from None
        from pydantic import ValidationError

        try:
            scenario = Scenario.model_validate(data)
        except ValidationError as exc:
            raise ScenarioError(f"{where}: {_describe_validation_error(exc)}") from None
        return ScenarioJob(nodeid, str(self._item.path), scenario, item=self._item.nodeid)

    def _submit(self, fields: dict[str, Any]) -> concurrent.futures.Future[ScenarioResult]:
        __tracebackhide__ = True
        job = self._job(fields)
        session = self._item.config.stash[SESSION_KEY]
        return session.ensure_runner().submit(job)

    def _finish(self, result: ScenarioResult) -> ScenarioResult:
        __tracebackhide__ = True
        self._item.stash.setdefault(RUNS_KEY, []).append(result)
        self._item.config.stash[SESSION_KEY].flush_messages()
        if result.status == ERROR:
            raise ScenarioRunError(f"{result.error_kind}: {result.error_message}", result)
        return result

    # -- the API -------------------------------------------------------------------------------------------------
    async def run(self, **fields: Any) -> ScenarioResult:
        """Simulate and judge one conversation; awaitable from an async test on any asyncio event loop.

        ``fields`` are a scenario's fields (``persona``, ``goal``, ``criteria``, ``turns``, ``variables``,
        ``min_score``, ``max_turns``, ``timeout``, ``language``, ``first_speaker``, ``client``, ``evaluator``,
        ``agent_cache``, ``name`` ...); ``agent`` is a Python callable, class or ``agent_factory`` function, a
        spec mapping (``{"http": {...}}``, ``{"openai": {...}}``, ``{"python": "mod:name"}``), or None for the
        suite's agent. Raises ``ScenarioError`` for an invalid field, ``ScenarioRunError`` for an error result.
        """
        __tracebackhide__ = True
        future = self._submit(fields)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise
        return self._finish(result)

    def run_sync(self, **fields: Any) -> ScenarioResult:
        """``run`` for a sync test: blocks until the conversation is judged (Ctrl-C stays responsive)."""
        __tracebackhide__ = True
        future = self._submit(fields)
        session = self._item.config.stash[SESSION_KEY]
        try:
            while True:
                try:
                    result = future.result(timeout=_WAIT_SLICE_S)
                    break
                except concurrent.futures.TimeoutError:
                    session.flush_messages()
        except BaseException:
            future.cancel()
            raise
        return self._finish(result)


@pytest.fixture(name="llmsim")
def llmsim_fixture(request: pytest.FixtureRequest) -> Iterator[LlmsimFixture]:
    """Run and judge conversations with your agent from a Python test; see ``LlmsimFixture``."""
    yield LlmsimFixture(request.node)


# -- reports ---------------------------------------------------------------------------------------------------------
def run_section(result: ScenarioResult) -> str:
    """A conversation as the test's ``llmsim transcript`` report section shows it: verdict, comment, chat."""
    from pytest_llmsim.reporting.terminal import result_transcript_text

    if result.status == ERROR:
        head = [f"scenario {result.scenario!r}: error ({result.error_kind})"]
    else:
        head = [f"scenario {result.scenario!r}: score {result.score} (min_score {result.min_score})",
                f"judge: {result.comment}"]
    if result.tool_calls:
        head.append(f"tools called: {', '.join(result.tool_calls)}")
    chat = result_transcript_text(result)
    return "\n".join([*head, chat] if chat else head)


def attach_runs(item: pytest.Item, report: pytest.TestReport) -> list[ScenarioResult]:
    """On the ``call`` report of a test that used the fixture: ``report.llmsim`` (the first conversation, as a
    scenario item carries it), ``report.llmsim_more`` (the later ones) and one ``llmsim transcript`` section per
    conversation. Returns the conversations (empty for a test that ran none)."""
    runs = item.stash.get(RUNS_KEY, [])
    if report.when != "call" or not runs:
        return []
    report.llmsim = runs[0].to_dict()  # type: ignore[attr-defined]  # plugin data rides on the report
    if len(runs) > 1:
        report.llmsim_more = [r.to_dict() for r in runs[1:]]  # type: ignore[attr-defined]  # plugin data rides on the report
    for number, result in enumerate(runs, 1):
        title = "llmsim transcript" if len(runs) == 1 else f"llmsim transcript ({number}: {result.scenario})"
        report.sections.append((f"Captured {title} call", run_section(result)))
    return runs
