"""Runs scenarios: one conversation + one verdict each, many in flight on one asyncio loop.

Why one module: it is the scenario run, from a submitted job to its result, on one event loop (scheduling,
conversation then verdict, errors turned into results, trials); its parts share the loop's state and one rule, that
a scenario's own trouble never raises, which is checked here once.

``run_scenario`` never raises for a scenario's own trouble: endpoint, template, cache-miss, no-agent-reply
and verdict errors become a result with status ``error`` so no finished work is lost. A conversation in which
the agent said nothing is never judged. ``Runner`` owns an event loop in a daemon thread; front ends submit
jobs from their own thread and get ``concurrent.futures.Future``s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from pytest_llmsim.agents.runtime import AgentRuntime
from pytest_llmsim.engine.conversation import no_agent_reply_error, simulate
from pytest_llmsim.engine.judge import CriteriaMetric, JudgeMetric, check_judge_sees_criteria
from pytest_llmsim.errors import ConfigError, ErrorKind, LlmsimError, MetricError, ScenarioError, VerdictError
from pytest_llmsim.llm.client import LLMClient, LLMReply, LLMRequest
from pytest_llmsim.llm.rate_limits import LIMIT_CLOCK, LimitClock, RateLimiter
from pytest_llmsim.llm.scrubbing import LogScrubber, RunSecrets, scrub_data
from pytest_llmsim.metrics.agents import (
    EXPECTED_AGENTS,
    ExpectedAgentsMetric,
    agent_conversation,
    never_spoke,
    target_agent,
    without_agent_option,
)
from pytest_llmsim.metrics.api import (
    Conversation,
    Metric,
    MetricResult,
    check_metric,
    conversation_of,
    entry_point_metrics,
    make_metric,
    metric_specs,
    run_metric,
)
from pytest_llmsim.metrics.judged import AgentSelectionJudge, FactsMetric, InformationAggregationJudge
from pytest_llmsim.metrics.rules import RougeMetric, RulesMetric
from pytest_llmsim.model.prompts import PromptRenderer
from pytest_llmsim.model.results import ERROR, FAILED, PASSED, ModelUsage, ScenarioResult
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.model.settings import ROLES, RunSettings, scrub_secrets
from pytest_llmsim.model.transcript import Transcript
from pytest_llmsim.model.trials import base_seed, combine, min_pass_rate, trial_count, trial_scenario
from pytest_llmsim.replay.cache import CallCache
from pytest_llmsim.replay.recordings import CURRENT as RECORDER
from pytest_llmsim.replay.recordings import ScenarioRecorder


@dataclass(frozen=True)
class ScenarioJob:
    nodeid: str
    source: str
    scenario: Scenario
    item: str = ""  # the pytest item that runs it, when not ``nodeid`` (a Python test's conversations)
    report_as: str = ""  # the result's node id, when not ``nodeid`` (a trial item: ``name[trial-2]``)
    trial: int = 0  # n >= 1: run trial n only (``trials.py``); 0: the scenario's trials, combined when several
    # A recorded conversation (``transcripts.py``): scored by the metrics, not simulated.
    transcript: Transcript | None = dataclasses.field(default=None, compare=False)

    @property
    def label(self) -> str:
        return self.nodeid


class MeteredClient:
    """Wraps the shared client for one scenario and tallies its usage per (role, model)."""

    def __init__(self, client: LLMClient) -> None:
        self._client = client
        self.usage: dict[tuple[str, str], ModelUsage] = {}

    async def complete(self, request: LLMRequest, *, label: str) -> LLMReply:
        reply = await self._client.complete(request, label=label)
        key = (request.role, request.model)
        meter = self.usage.setdefault(key, ModelUsage(request.role, request.model))
        meter.add(reply.prompt_tokens, reply.completion_tokens, reply.cached,
                  cached_input_tokens=reply.cached_input_tokens)
        return reply

    def add_usage(self, role: str, model: str, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        """Count an LLM call made outside this wrapper (an openai agent's, on its own endpoint)."""
        meter = self.usage.setdefault((role, model), ModelUsage(role, model))
        meter.add(prompt_tokens, completion_tokens, cached)


async def run_scenario(
    job: ScenarioJob, settings: RunSettings, client: LLMClient, renderer: PromptRenderer,
    agents: AgentRuntime | None = None,
) -> ScenarioResult:
    """One conversation and its verdict; ``agents`` runs code agents (one per run: imports happen once)."""
    own_agents = agents is None and settings.agent_for(job.scenario) is not None
    if own_agents:
        agents = AgentRuntime(settings, client.cache, client.secrets)
    try:
        return await _run_scenario(job, settings, client, renderer, agents)
    finally:
        if own_agents and agents is not None:
            await agents.aclose()


async def score_transcript(job: ScenarioJob, settings: RunSettings, client: LLMClient,
                           renderer: PromptRenderer) -> ScenarioResult:
    """The metrics' result on ``job.transcript``: statuses, errors, recordings, chat files and secret scrubbing
    exactly as for a simulated conversation (the runner's own path, with the conversation step replaced)."""
    if job.transcript is None:
        raise ValueError(f"{job.label}: score_transcript needs a job with a transcript")
    return await run_scenario(job, settings, client, renderer)


async def _run_scenario(
    job: ScenarioJob, settings: RunSettings, client: LLMClient, renderer: PromptRenderer,
    agents: AgentRuntime | None,
) -> ScenarioResult:
    scenario = trial_scenario(job.scenario, settings, job.trial)
    client.secrets.add_spec(settings.agent_for(scenario))  # known before any reply can echo them
    min_score = scenario.min_score or settings.min_score
    result = ScenarioResult(scenario=scenario.name, nodeid=job.report_as or job.nodeid, source=job.source, status=ERROR,
                            min_score=min_score, trial=job.trial, seed=base_seed(scenario, settings),
                            tags=list(scenario.tags))
    metered = MeteredClient(client)
    # The metrics' results so far; a metric that errors is the last, with ``error`` (its kind): the metrics
    # summary (``reporting.metrics_summary``) counts it as that metric's error.
    evaluated: list[dict[str, Any]] = []
    started = time.perf_counter()
    recorder: ScenarioRecorder | None = None
    token = None
    # This scenario's waiting on rate limits: its place in the limiter's queues (it started now: older
    # conversations go first) and the bound on that waiting, which the conversation's timeout leaves out.
    clock_token = LIMIT_CLOCK.set(LimitClock(settings.endpoint.rate_limit_wait))
    try:
        if settings.recordings_dir is not None:
            recorder = ScenarioRecorder.open(
                settings.recordings_dir, settings.record_mode, nodeid=job.nodeid, item=job.item,
                scenario=scenario.name, endpoint=settings.endpoint.identity, match_endpoint=settings.match_endpoint,
                trial=job.trial or None)
            token = RECORDER.set(recorder)
            settings = adopt_recorded_roles(settings, recorder)
        specs = metric_specs(scenario, settings.evaluate)
        registry = settings.metrics if settings.metrics is not None else default_registry()
        # Made before the conversation: an unknown metric or a bad option costs no call.
        # A metric that reads its ``agent`` option itself (``Metric.reads_agent_option``) keeps it and sees the
        # whole conversation; any other is given only the target agent's messages.
        own = [bool(getattr(registry.get(name), "reads_agent_option", False)) for name, _ in specs]
        targets = [None if reads else _target(options, job.label, name)
                   for reads, (name, options) in zip(own, specs, strict=True)]
        metrics = [make_metric(name, _with_base_dir(options if reads else without_agent_option(options), job.source),
                               registry, label=job.label) for reads, (name, options) in zip(own, specs, strict=True)]
        for metric, (name, _) in zip(metrics, specs, strict=True):
            check_metric(metric, name, scenario, label=job.label)
        _check_a_metric_decides(metrics, specs, scenario, job.label)
        if any(isinstance(metric, JudgeMetric) for metric in metrics) and "criteria" not in {n for n, _ in specs}:
            # (with the criteria metric, the criteria are checked one by one: the judge need not see them)
            check_judge_sees_criteria(scenario, settings, renderer, label=job.label)
        if job.transcript is not None:
            from pytest_llmsim.engine.transcripts import recorded_conversation

            transcript = recorded_conversation(job.transcript, scenario, settings, renderer, label=job.label)
        else:
            _phase("conversation")
            transcript = await simulate(scenario, settings, metered, renderer, label=job.label, cache=client.cache,
                                        agents=agents)
        result.transcript = transcript.to_dicts()
        result.ended_by, result.end_reason = transcript.ended_by, transcript.end_reason
        refusal = no_agent_reply_error(transcript, scenario, settings, label=job.label)
        if refusal is not None:  # nothing the agent said: an error, never a verdict (the transcript stays)
            raise refusal
        _phase("metrics")
        outcomes = await _evaluate(metrics, specs, conversation_of(transcript, scenario, result.transcript),
                                   scenario, settings, metered, renderer, job.label, targets, evaluated)
        if all(outcome.passed is None for outcome in outcomes):
            result.metrics = [outcome.to_dict() for outcome in outcomes]  # shown with the error
            raise MetricError(no_deciding_metric(scenario.name, job.label, [o.name for o in outcomes]))
    except VerdictError as exc:
        result.error_kind, result.error_message, result.raw_verdict = exc.kind, str(exc), exc.raw_reply
        result.metrics = result.metrics or evaluated
    except LlmsimError as exc:
        result.error_kind, result.error_message = exc.kind, str(exc)
        result.metrics = result.metrics or evaluated
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a bug or an unexpected library error: an error
        # result. (SystemExit and KeyboardInterrupt on the loop thread come from user code, e.g. a metric's
        # constructor, never from a Ctrl-C; let through, they would kill the loop every item waits on.)
        result.error_kind = ErrorKind.INTERNAL
        result.error_message = (f"{job.label}: internal error {type(exc).__name__}: {exc} (please report this "
                                f"with the traceback below)\n{traceback.format_exc(limit=-8)}")
    else:
        result.metrics = [outcome.to_dict() for outcome in outcomes]
        judge = next((metric for metric in metrics if isinstance(metric, JudgeMetric)), None)
        if judge is not None and judge.verdict is not None:
            verdict = judge.verdict
            result.score, result.comment, result.raw_verdict = verdict.score, verdict.comment, verdict.raw_reply
            result.min_score = judge.min_score(scenario)
        result.status = FAILED if any(outcome.passed is False for outcome in outcomes) else PASSED
    finally:
        LIMIT_CLOCK.reset(clock_token)
        if token is not None:
            RECORDER.reset(token)
    scrub = _scrubber(settings, client.secrets.values() | (agents.secrets() if agents is not None else frozenset()))
    _scrub_secrets(result, scrub)
    result.usage = list(metered.usage.values())
    if recorder is not None:
        _finish_recording(recorder, result, job, settings, scrub)
    if settings.chats_dir is not None and result.transcript:
        _write_chat(result, settings, scenario)
    result.duration_seconds = round(time.perf_counter() - started, 4)
    return result


def _write_chat(result: ScenarioResult, settings: RunSettings, scenario: Scenario) -> None:
    from pytest_llmsim.reporting.chat_files import write_chat

    assert settings.chats_dir is not None
    try:
        result.chat_file = str(write_chat(settings.chats_dir, result, readable=settings.readable,
                                          trial=max(1, result.trial), seed=result.seed))
    except OSError as exc:  # the verdict stands; the run's summary says the file is missing
        result.chat_file = f"not written: {exc.strerror or exc}"


def _with_base_dir(options: dict[str, Any], source: str) -> dict[str, Any]:
    """A ``reference_file`` (the rouge metric's) is relative to the scenario file, unless ``base_dir`` says."""
    if "reference_file" in options and "base_dir" not in options and source:
        return {**options, "base_dir": str(Path(source).parent)}
    return options


async def _evaluate(metrics: list[Metric], specs: list[tuple[str, dict[str, Any]]], conversation: Conversation,
                    scenario: Scenario, settings: RunSettings, client: MeteredClient, renderer: PromptRenderer,
                    label: str, targets: list[str | None],
                    evaluated: list[dict[str, Any]] | None = None) -> list[MetricResult]:
    """Every metric's result, in the scenario's order (each LLM metric metered with the scenario).

    Each metric gets as long as the conversation (the scenario's ``timeout``), except the built-in judge and
    criteria metrics: their every LLM call has its own deadline and bounded retries. A metric with a target
    agent (its ``agent`` option) reads only that agent's messages, and fails, unrun, when it never spoke."""
    outcomes = []
    deadline = scenario.timeout or settings.timeout
    for metric, (name, _), target in zip(metrics, specs, targets, strict=True):
        seen = conversation
        if target is not None:
            own = agent_conversation(conversation, target)
            if own is None:
                outcomes.append(never_spoke(name, target, conversation))
                if evaluated is not None:
                    evaluated.append(outcomes[-1].to_dict())
                continue
            seen = own
        bind = getattr(metric, "bind", None)
        if callable(bind):  # an LLMMetric (duck-typed, as make_metric checks metrics)
            bind(client, settings, scenario, label)
        if isinstance(metric, JudgeMetric):
            metric.bind_renderer(renderer)
        bounded = type(metric) in (JudgeMetric, CriteriaMetric)
        try:
            outcome = await run_metric(metric, name, seen, scenario, label=label,
                                       timeout=None if bounded else deadline)
        except LlmsimError as exc:
            if evaluated is not None:
                evaluated.append({"name": name, "score": None, "passed": None, "reason": str(exc).split("\n")[0],
                                  "details": {}, "error": str(exc.kind)})
            raise
        if target is not None:
            outcome.details = {**outcome.details, "agent": target}
            outcome.reason = f"agent {target!r}: {outcome.reason}" if outcome.reason else f"agent {target!r}"
        outcomes.append(outcome)
        if evaluated is not None:
            evaluated.append(outcome.to_dict())
    return outcomes


def _target(options: dict[str, Any], label: str, name: str) -> str | None:
    try:
        return target_agent(options, label, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_a_metric_decides(metrics: list[Metric], specs: list[tuple[str, dict[str, Any]]], scenario: Scenario,
                            label: str) -> None:
    """ScenarioError, before any call, when no metric of the scenario can pass or fail it (each is a rouge
    without a threshold: it only informs), so the scenario could never fail. Whether another metric decides
    is known only from its result (``no_deciding_metric``)."""
    if all(isinstance(metric, RougeMetric) and metric.threshold is None for metric in metrics):
        raise ScenarioError(no_deciding_metric(scenario.name, label, [name for name, _ in specs], static=True))


def no_deciding_metric(scenario: str, label: str, names: list[str], *, static: bool = False) -> str:
    """The error of a scenario whose metrics all only inform (``passed`` None): a pass would be no verdict."""
    shown = ", ".join(names) if names else "none"
    why = ("rouge without a 'threshold' only informs" if static
           else "every metric returned passed=None (it only informs)")
    return (f"{label}: no metric decides scenario {scenario!r} (metrics: {shown}): {why}, so the scenario could "
            "never fail and its pass would mean nothing. Add a 'threshold' to the metric (e.g. rouge: {reference: "
            "..., threshold: 0.3}) or a deciding metric (judge, criteria, rules) to its 'evaluate'")


async def run_job(job: ScenarioJob, settings: RunSettings, client: LLMClient, renderer: PromptRenderer,
                  agents: AgentRuntime | None, slots: asyncio.Semaphore) -> ScenarioResult:
    """``job``'s conversation, or its k trials (each holding a slot, all in flight at once) combined."""
    k = trial_count(job.scenario, settings) if job.trial == 0 else 1
    if k <= 1:
        async with slots:
            return await run_scenario(job, settings, client, renderer, agents)

    async def trial(n: int) -> ScenarioResult:
        async with slots:
            return await run_scenario(dataclasses.replace(job, trial=n), settings, client, renderer, agents)

    results = await asyncio.gather(*(trial(n) for n in range(1, k + 1)))
    return combine(results, min_pass_rate(job.scenario, settings))


_REGISTRY: dict[str, Any] = {}


def builtin_metrics() -> dict[str, Any]:
    return {"judge": JudgeMetric, "criteria": CriteriaMetric, "rules": RulesMetric, "rouge": RougeMetric,
            "facts": FactsMetric, "agent_selection_judge": AgentSelectionJudge,
            "information_aggregation_judge": InformationAggregationJudge, EXPECTED_AGENTS: ExpectedAgentsMetric}


def default_registry() -> dict[str, Any]:
    """The built-in metrics and those of installed entry points (looked up once per process)."""
    if not _REGISTRY:
        _REGISTRY.update(entry_point_metrics())
        _REGISTRY.update(builtin_metrics())
    return _REGISTRY


def adopt_recorded_roles(settings: RunSettings, recorder: ScenarioRecorder) -> RunSettings:
    """``settings`` with the role settings the user set nowhere (``settings.adoptable``) taken from the scenario's
    recording: a replay-only run without an endpoint replays recordings made against any endpoint."""
    recorded = recorder.recorded_roles()
    if not settings.adoptable or not recorded:
        return settings
    changes = {}
    for role, values in recorded.items():
        if role not in ("agent", "client", "evaluator"):
            continue
        adopted = {name: value for name, value in values.items()
                   if f"{role}.{name}" in settings.adoptable and name in ("model", "temperature", "max_tokens")}
        if adopted:
            changes[role] = dataclasses.replace(getattr(settings, role), **adopted)
    return dataclasses.replace(settings, **changes) if changes else settings


def _finish_recording(recorder: ScenarioRecorder, result: ScenarioResult, job: ScenarioJob, settings: RunSettings,
                      scrub: Callable[[str], str]) -> None:
    spec = settings.agent_for(job.scenario)
    sides = ("client", "evaluator") if spec is not None and spec.kind != "prompt" else ROLES
    roles = {}
    for side in sides:
        role = settings.role(side, job.scenario)
        roles[side] = {"model": role.model, "temperature": role.temperature, "max_tokens": role.max_tokens}
    try:
        result.recording_state = recorder.finish(result, roles, scrub)
    except OSError as exc:
        result.recording_state = f"not written: {exc.strerror or exc}"
    if result.recording_state:
        root = settings.rootdir or Path.cwd()
        try:
            result.recording = recorder.path.relative_to(root).as_posix()
        except ValueError:
            result.recording = str(recorder.path)


def _scrubber(settings: RunSettings, extra: frozenset[str] = frozenset()) -> Callable[[str], str]:
    """The function removing the run's secrets (``extra``: ``scrubbing.RunSecrets.values``) from a text."""
    # EndpointSettings.scrub, where available
    endpoint_scrub: Callable[[str], str] | None = getattr(settings.endpoint, "scrub", None)
    if endpoint_scrub is None:
        return lambda text: text
    if not extra:
        return endpoint_scrub

    def scrub(text: str) -> str:
        return scrub_secrets(endpoint_scrub(text), extra)
    return scrub


def _scrub_secrets(result: ScenarioResult, scrub: Callable[[str], str]) -> None:
    """Scrub every text the result stores (reports, exports, xdist)."""
    result.error_message = scrub(result.error_message) if result.error_message else ""
    result.raw_verdict = scrub(result.raw_verdict) if result.raw_verdict else ""
    result.comment = scrub(result.comment) if result.comment else ""
    result.end_reason = scrub(result.end_reason) if result.end_reason else ""
    result.transcript = [scrub_data(turn, scrub) for turn in result.transcript]  # texts and tool calls
    for metric in result.metrics:
        metric["reason"] = scrub(metric.get("reason") or "")
        metric["details"] = scrub_data(metric.get("details") or {}, scrub)


@dataclass
class _JobState:
    """What the runner's watchdog knows of one submitted job (written on the loop thread, read by the watchdog)."""

    job: ScenarioJob
    timeout: float
    phase: str = "waiting"  # waiting (for a slot) | conversation | metrics


_JOB_STATE: contextvars.ContextVar[_JobState | None] = contextvars.ContextVar("llmsim_job_state", default=None)


def _phase(phase: str) -> None:
    state = _JOB_STATE.get()
    if state is not None:
        state.phase = phase


class _Limits(TypedDict):
    """The run's rate caps, as ``RateLimiter`` takes them."""

    rpm: float | None
    tpm: float | None
    shared_dir: Path | None
    workers: int


_BEAT_S = 0.25  # how often the watchdog checks that the loop runs


def stall_grace(timeout: float) -> float:
    """How much longer than a scenario's ``timeout`` the loop may stall before its item errors."""
    return max(2.0, 0.1 * timeout)


class Runner:
    """An event loop in a daemon thread running up to ``settings.concurrency`` scenarios at once.

    No item waits forever on it. A watchdog thread checks that the loop runs: when it has been blocked longer
    than a scenario's ``timeout`` (+ ``stall_grace``), by an async agent or metric making a blocking call
    (``time.sleep`` in an ``async def``), the scenario's future gets an error result naming where the loop is
    stuck, since its own ``asyncio`` deadline cannot fire on a blocked loop. When the loop thread dies (a
    ``SystemExit`` no boundary caught), every unfinished future gets an ``internal_error`` naming the cause,
    and so does every later submission.
    """

    def __init__(self, settings: RunSettings, *, rpm: float | None = None, tpm: float | None = None,
                 shared_dir: Path | None = None, workers: int = 1) -> None:
        """``rpm``/``tpm``: caps for the whole run, one budget in ``shared_dir`` for its processes (else an even
        share of ``workers``); see ``rate_limits.RateLimiter``."""
        self.settings = settings
        self._limits: _Limits = {"rpm": rpm, "tpm": tpm, "shared_dir": shared_dir, "workers": workers}
        self._loop = asyncio.new_event_loop()
        self._pending: dict[concurrent.futures.Future[ScenarioResult], _JobState] = {}
        self._lock = threading.Lock()
        self._death = ""  # why the loop thread ended, once it has
        self._beat = time.monotonic()  # when the loop last ran the watchdog's heartbeat
        self._ping_sent = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="llmsim-loop", daemon=True)
        self._thread.start()
        self._closed = False
        self.client, self.renderer, self._slots = asyncio.run_coroutine_threadsafe(
            self._make_services(), self._loop
        ).result()
        threading.Thread(target=self._watch, name="llmsim-watchdog", daemon=True).start()

    def _serve(self) -> None:
        """The loop thread: runs the loop until ``close`` stops it; if anything ends it otherwise, every waiting
        job errors with the cause instead of waiting forever."""
        cause = "the engine's event loop stopped"
        try:
            self._loop.run_forever()
        except BaseException as exc:  # SystemExit / KeyboardInterrupt raised by user code on the loop
            cause = (f"the engine's event loop thread died of {type(exc).__name__}: {exc} (raised by code running "
                     f"on it: an agent, a metric or a hook)\n{traceback.format_exc(limit=-8)}")
        finally:
            self._loop_ended(cause)

    def _loop_ended(self, cause: str) -> None:
        with self._lock:
            if self._death:
                return
            self._death = cause
            pending = list(self._pending.items())
            self._pending.clear()
        for future, state in pending:
            self._fail(future, state, ErrorKind.INTERNAL, f"{state.job.label}: not finished: {cause}; every "
                       "conversation still running or waiting errors (please report this if no agent or metric "
                       "of yours exits)")

    @staticmethod
    def _fail(future: concurrent.futures.Future[ScenarioResult], state: _JobState, kind: str,
              message: str) -> None:
        job = state.job
        result = ScenarioResult(scenario=job.scenario.name, nodeid=job.report_as or job.nodeid, source=job.source,
                                status=ERROR, min_score=job.scenario.min_score, trial=job.trial,
                                error_kind=kind, error_message=message, tags=list(job.scenario.tags))
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_result(result)

    def _schedule(self, coroutine: Coroutine[Any, Any, ScenarioResult],
                  job: ScenarioJob) -> concurrent.futures.Future[ScenarioResult]:
        """Run ``coroutine`` (``job``'s) on the loop; its future is the runner's own, which the watchdog and the
        loop thread's end can settle with an error when the coroutine cannot finish. Cancelling it cancels the
        coroutine."""
        state = _JobState(job, job.scenario.timeout or self.settings.timeout)
        outer: concurrent.futures.Future[ScenarioResult] = concurrent.futures.Future()

        async def run() -> ScenarioResult:
            _JOB_STATE.set(state)
            return await coroutine

        with self._lock:
            dead = self._death
            if not dead:
                self._pending[outer] = state
        if dead:
            coroutine.close()
            self._fail(outer, state, ErrorKind.INTERNAL, f"{job.label}: not run: {dead}")
            return outer
        inner = asyncio.run_coroutine_threadsafe(run(), self._loop)

        def settle(done: concurrent.futures.Future[ScenarioResult]) -> None:
            with self._lock:
                self._pending.pop(outer, None)
            if done.cancelled():
                outer.cancel()
                return
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                error = done.exception()
                if error is not None:
                    outer.set_exception(error)
                else:
                    outer.set_result(done.result())

        def cancelled(done: concurrent.futures.Future[ScenarioResult]) -> None:
            with self._lock:
                self._pending.pop(outer, None)
            if done.cancelled():
                inner.cancel()

        inner.add_done_callback(settle)
        outer.add_done_callback(cancelled)
        return outer

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        self._ping_sent = False

    def stalled_for(self) -> float:
        """Seconds since the loop last ran a heartbeat (about 0 while it runs)."""
        return max(0.0, time.monotonic() - self._beat - _BEAT_S)

    def _watch(self) -> None:
        while not self._stop.wait(_BEAT_S):
            if not self._thread.is_alive():
                self._loop_ended("the engine's event loop thread ended")
                return
            if not self._ping_sent:
                self._ping_sent = True
                try:
                    self._loop.call_soon_threadsafe(self._heartbeat)
                except RuntimeError:  # closed
                    return
            stalled = self.stalled_for()
            if stalled < 1.0:
                continue
            with self._lock:
                late = [(future, state) for future, state in self._pending.items()
                        if stalled > state.timeout + stall_grace(state.timeout)]
                for future, _ in late:
                    del self._pending[future]
            if late:
                where = self._stuck_at()
                for future, state in late:
                    kind = {"conversation": ErrorKind.AGENT, "metrics": ErrorKind.METRIC}.get(state.phase,
                                                                                        ErrorKind.INTERNAL)
                    self._fail(future, state, kind, (
                        f"{state.job.label}: timeout: the scenario's timeout={state.timeout:g}s cannot be enforced: "
                        f"the engine's event loop has been blocked for {stalled:.1f}s{where} (in the {state.phase} "
                        "phase of this scenario). An async agent or metric that makes a blocking call (time.sleep, "
                        "blocking I/O, a long computation) inside 'async def' stalls every conversation of the "
                        "run; await asyncio.sleep or an async client instead, or make it a plain 'def' (a sync "
                        "agent or metric runs in its own thread)"))

    def _stuck_at(self) -> str:
        """`` at file:line in function`` of the innermost frame of the loop thread outside asyncio and llmsim."""
        frame = sys._current_frames().get(self._thread.ident or -1)
        package = str(Path(__file__).resolve().parent.parent)  # all of pytest_llmsim
        while frame is not None:
            filename = frame.f_code.co_filename
            if not filename.startswith(package) and not re.search(r"[/\\](asyncio|concurrent|threading)",
                                                                   filename):
                return f" at {filename}:{frame.f_lineno} in {frame.f_code.co_name}()"
            frame = frame.f_back
        return ""

    async def _make_services(self) -> tuple[LLMClient, PromptRenderer, asyncio.Semaphore]:
        # Every secret of the run, scrubbed from replies as they arrive and from everything written (the cache too).
        self.secrets = RunSecrets(self.settings.endpoint)
        self.secrets.add_spec(self.settings.agent_spec)
        self._log_scrubber = LogScrubber(self.secrets).install()
        cache = CallCache(self.settings.cache_dir, self.settings.record_mode, scrub=self.secrets.scrub_data)
        limiter = RateLimiter(**self._limits, concurrency=self.settings.concurrency,
                              endpoint=self.settings.endpoint.identity)
        client = LLMClient(self.settings.endpoint, cache, limiter, secrets=self.secrets)
        self.agents = AgentRuntime(self.settings, cache, self.secrets)
        return client, PromptRenderer(self.settings.prompts_dir), asyncio.Semaphore(self.settings.concurrency)

    def know_secrets(self, scenarios: Iterable[Scenario]) -> None:
        """Register the secrets of every scenario's agent before any runs: each xdist worker collects the same
        scenarios, so each scrubs the same secrets, whichever scenarios it happens to run."""
        for scenario in scenarios:
            self.secrets.add_spec(self.settings.agent_for(scenario))

    async def _run(self, job: ScenarioJob) -> ScenarioResult:
        return await run_job(job, self.settings, self.client, self.renderer, self.agents, self._slots)

    def submit(self, job: ScenarioJob) -> concurrent.futures.Future[ScenarioResult]:
        if self._closed:
            raise RuntimeError("runner is closed")
        return self._schedule(self._run(job), job)

    def run_all(self, jobs: Iterable[ScenarioJob]) -> list[ScenarioResult]:
        """Run ``jobs`` concurrently and return their results in the given order."""
        futures = [self.submit(job) for job in jobs]
        return [f.result() for f in futures]

    def close(self, timeout: float = 10.0) -> None:
        """Cancel unfinished work, close the HTTP client and the cache, stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        self._log_scrubber.uninstall()

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.agents.aclose()
            await self.client.aclose()
            self.client.cache.close()

        self._stop.set()
        if not self._thread.is_alive() and not self._loop.is_closed():
            # The loop thread died: run the shutdown here (connections and the cache closed, not leaked).
            try:
                self._loop.run_until_complete(asyncio.wait_for(shutdown(), timeout))
            except BaseException:  # whatever killed the loop may strike again: the run is over
                pass
            self._loop.close()
            return
        if self.stalled_for() > 1.0:
            timeout = min(timeout, 1.0)  # a blocked loop runs no shutdown: do not wait for it
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
