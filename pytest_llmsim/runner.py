"""Runs scenarios: one conversation + one verdict each, many in flight on one asyncio loop.

``run_scenario`` never raises for a scenario's own trouble: endpoint, template, cache-miss, no-agent-reply
and verdict errors become a result with status ``error`` so no finished work is lost. A conversation in which
the agent said nothing is never judged. ``Runner`` owns an event loop in a daemon thread; front ends submit
jobs from their own thread and get ``concurrent.futures.Future``s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agents import AgentRuntime
from .cache import CallCache
from .client import LLMClient, LLMReply, LLMRequest, RateLimiter
from .conversation import Transcript, no_agent_reply_error, simulate
from .errors import LlmsimError, VerdictError
from .judge import CriteriaMetric, JudgeMetric, check_judge_sees_criteria
from .metric_rules import RougeMetric, RulesMetric
from .metrics import (
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
from .prompts import PromptRenderer
from .recordings import CURRENT as RECORDER
from .recordings import ScenarioRecorder
from .results import ERROR, FAILED, PASSED, ModelUsage, ScenarioResult
from .scenario import Scenario
from .scrubbing import LogScrubber, RunSecrets, scrub_data
from .settings import ROLES, RunSettings, scrub_secrets
from .trials import base_seed, combine, min_pass_rate, trial_count, trial_scenario


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
                            min_score=min_score, trial=job.trial, seed=base_seed(scenario, settings))
    metered = MeteredClient(client)
    started = time.perf_counter()
    recorder: ScenarioRecorder | None = None
    token = None
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
        metrics = [make_metric(name, _with_base_dir(options, job.source), registry, label=job.label)
                   for name, options in specs]
        for metric, (name, _) in zip(metrics, specs, strict=True):
            check_metric(metric, name, scenario, label=job.label)
        if any(isinstance(metric, JudgeMetric) for metric in metrics) and "criteria" not in {n for n, _ in specs}:
            # (with the criteria metric, the criteria are checked one by one: the judge need not see them)
            check_judge_sees_criteria(scenario, settings, renderer, label=job.label)
        if job.transcript is not None:
            from .transcripts import recorded_conversation

            transcript = recorded_conversation(job.transcript, scenario, settings, renderer, label=job.label)
        else:
            transcript = await simulate(scenario, settings, metered, renderer, label=job.label, cache=client.cache,
                                        agents=agents)
        result.transcript = transcript.to_dicts()
        result.ended_by, result.end_reason = transcript.ended_by, transcript.end_reason
        refusal = no_agent_reply_error(transcript, scenario, settings, label=job.label)
        if refusal is not None:  # nothing the agent said: an error, never a verdict (the transcript stays)
            raise refusal
        outcomes = await _evaluate(metrics, specs, conversation_of(transcript, scenario, result.transcript),
                                   scenario, settings, metered, renderer, job.label)
    except VerdictError as exc:
        result.error_kind, result.error_message, result.raw_verdict = exc.kind, str(exc), exc.raw_reply
    except LlmsimError as exc:
        result.error_kind, result.error_message = exc.kind, str(exc)
    except Exception as exc:  # a bug or an unexpected library error: keep it visible as an error result
        result.error_kind = "internal_error"
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
    from .chat_files import write_chat

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
                    label: str) -> list[MetricResult]:
    """Every metric's result, in the scenario's order (each LLM metric metered with the scenario)."""
    outcomes = []
    for metric, (name, _) in zip(metrics, specs, strict=True):
        if callable(getattr(metric, "bind", None)):  # an LLMMetric (duck-typed, as make_metric checks metrics)
            metric.bind(client, settings, scenario, label)  # type: ignore[attr-defined]
        if isinstance(metric, JudgeMetric):
            metric.bind_renderer(renderer)
        outcomes.append(await run_metric(metric, name, conversation, scenario, label=label))
    return outcomes


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
    return {"judge": JudgeMetric, "criteria": CriteriaMetric, "rules": RulesMetric, "rouge": RougeMetric}


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
    endpoint_scrub = getattr(settings.endpoint, "scrub", None)  # EndpointSettings.scrub, where available
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


class Runner:
    """An event loop in a daemon thread running up to ``settings.concurrency`` scenarios at once."""

    def __init__(self, settings: RunSettings, *, rpm: float | None = None, tpm: float | None = None,
                 shared_dir: Path | None = None, workers: int = 1) -> None:
        """``rpm``/``tpm``: caps for the whole run, one budget in ``shared_dir`` for its processes (else an even
        share of ``workers``); see ``rate_limits.RateLimiter``."""
        self.settings = settings
        self._limits = {"rpm": rpm, "tpm": tpm, "shared_dir": shared_dir, "workers": workers}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmsim-loop", daemon=True)
        self._thread.start()
        self._closed = False
        self.client, self.renderer, self._slots = asyncio.run_coroutine_threadsafe(
            self._make_services(), self._loop
        ).result()

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
        return asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

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

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
