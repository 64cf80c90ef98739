"""Metrics: what is evaluated about a conversation, and the public API for your own (no pytest).

A scenario lists its metrics under ``evaluate:`` (default: ``[judge]``), each a name or a one-key mapping of a
name to its options::

    evaluate:
      - judge                                   # the 1-3 LLM verdict, min_score
      - criteria                                # one LLM call: pass/fail and a reason per criterion
      - rules: {not_contains: [refund], max_agent_turns: 8}
      - rouge: {reference: "Your order is confirmed", threshold: 0.3}
      - my_metric: {any: options}               # registered by an entry point or the pytest_llmsim_metrics hook

A metric is a :class:`Metric` subclass: ``evaluate(conversation, scenario)`` (sync or async) returns a
:class:`MetricResult`. ``passed`` None means the metric only informs; False fails the scenario, and the
failure names the metric. A metric that raises makes the scenario an *error* naming the metric, never a score.
:class:`LLMMetric` gives a metric the run's cached, metered LLM client (``await self.ask(...)``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_llmsim.errors import ConfigError, LlmsimError, MetricError

if TYPE_CHECKING:
    from pytest_llmsim.llm.client import Completer, LLMReply
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.model.settings import RunSettings
    from pytest_llmsim.model.transcript import Transcript

DEFAULT_METRICS: tuple[str, ...] = ("judge",)


@dataclass
class MetricResult:
    """One metric's verdict on one conversation.

    ``score``: the metric's number (a 1-3 judge score, a ROUGE F1, the share of criteria met), None if it has
    none. ``passed``: True/False against the metric's threshold, None when it has no threshold (informational).
    ``reason``: one line people read (what failed, where). ``details``: JSON-able data for the exports.
    """

    name: str
    score: float | None = None
    passed: bool | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "passed": self.passed, "reason": self.reason,
                "details": dict(self.details)}


@dataclass(frozen=True)
class Conversation:
    """What a metric sees: the transcript (turns of ``{"role": "client"|"agent", "text", "tool_calls"}``), who
    ended it and why, and the scenario's name and variables."""

    turns: tuple[Mapping[str, Any], ...]
    ended_by: str = ""
    end_reason: str = ""
    scenario_name: str = ""
    variables: Mapping[str, Any] = field(default_factory=dict)
    transcript: Transcript | None = None  # the engine's own object, for built-in metrics

    @property
    def agent_turns(self) -> list[Mapping[str, Any]]:
        return [turn for turn in self.turns if turn.get("role") == "agent"]

    @property
    def agent_text(self) -> str:
        """Every agent turn's text, one per line."""
        return "\n".join(str(turn.get("text", "")) for turn in self.agent_turns)

    @property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """The agent's tool calls in call order: ``{"name", "arguments", "result"}``."""
        from pytest_llmsim.model.results import turn_tool_calls

        return [call for turn in self.agent_turns for call in turn_tool_calls(turn)]


class Metric:
    """Base class of every metric. Subclasses set ``name`` and implement ``evaluate`` (sync or async).

    ``options`` are the mapping given in ``evaluate:`` (``{}`` for a bare name); check them in ``__init__``
    and raise ``ValueError`` with a readable message: it becomes an error naming the scenario and the metric.
    """

    name: ClassVar[str] = ""
    # True: the metric reads its ``agent`` option itself and sees the whole conversation (the multi-agent judged
    # metrics need the other agents' messages); False: the runner gives it only that agent's messages.
    reads_agent_option: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Mapping[str, Any] = dict(options or {})

    def check(self, scenario: Scenario) -> None:
        """Called before the conversation: raise ``ValueError`` if this metric cannot score ``scenario`` (a
        missing field, say), so the item is an error before any call is made. Optional."""

    def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult | Any:
        raise NotImplementedError


class LLMMetric(Metric):
    """A metric that asks an LLM. ``ask`` goes through the run's cache (recorded and replayed like every call)
    and is metered with the scenario's usage, as the ``evaluator`` role unless ``role`` says otherwise."""

    role: ClassVar[str] = "evaluator"

    def bind(self, client: Completer, settings: RunSettings, scenario: Scenario, label: str) -> None:
        self._client, self._settings, self._scenario, self._label = client, settings, scenario, label

    async def ask(self, messages: Sequence[Mapping[str, str]], *, json_schema: dict[str, Any] | None = None,
                  attempt: int = 0) -> LLMReply:
        from pytest_llmsim.llm.client import LLMRequest

        role = self._settings.role(self.role, self._scenario)
        seed = self._scenario.seed if self._scenario.seed is not None else self._settings.default_seed
        request = LLMRequest(role=self.role, model=role.model,
                             messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
                             temperature=role.temperature, max_tokens=role.max_tokens, seed=seed,
                             json_schema=json_schema, attempt=attempt)
        return await self._client.complete(request, label=f"{self._label} {self.name} attempt {attempt + 1}")


# -- the registry -------------------------------------------------------------------------------------------------
MetricFactory = Callable[[Mapping[str, Any]], Metric]


def entry_point_metrics() -> dict[str, MetricFactory]:
    """Metrics other packages register under the entry point group ``pytest_llmsim.metrics.api`` (name -> class)."""
    from importlib.metadata import entry_points

    found: dict[str, MetricFactory] = {}
    for entry in entry_points(group="pytest_llmsim.metrics.api"):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken plugin package: name it, do not take the run down silently
            raise ConfigError(f"metric {entry.name!r} of the entry point {entry.value!r} cannot be loaded: "
                              f"{type(exc).__name__}: {exc}") from None
    return found


def metric_specs(scenario: Scenario, default: Sequence[str] = DEFAULT_METRICS) -> list[tuple[str, dict[str, Any]]]:
    """The scenario's metrics as (name, options), in order: its ``evaluate`` or ``default``; then
    ``expected_agents`` when the scenario has that field (deterministic agent selection)."""
    if scenario.evaluate is not None:
        specs = [(name, dict(options)) for name, options in scenario.evaluate]
    else:
        specs = [(name, {}) for name in default]
    expected = getattr(scenario, "expected_agents", None)
    if expected is not None:
        specs.append(("expected_agents", dict(expected)))
    return specs


def make_metric(name: str, options: Mapping[str, Any], registry: Mapping[str, MetricFactory], *,
                label: str) -> Metric:
    factory = registry.get(name)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"{label}: unknown metric {name!r} in 'evaluate'; known metrics: {known} (register your "
                          "own with the pytest_llmsim_metrics hook or the pytest_llmsim.metrics.api entry point)")
    try:
        metric = factory(options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: metric {name!r}: {exc}") from None
    if not callable(getattr(metric, "evaluate", None)):  # duck-typed: a Metric class imported twice is still one
        raise ConfigError(f"{label}: metric {name!r} made a {type(metric).__name__}, not a pytest_llmsim.Metric")
    return metric


def check_metric(metric: Metric, name: str, scenario: Scenario, *, label: str) -> None:
    """The metric's own check of the scenario, before the conversation (a ValueError becomes a ConfigError)."""
    check = getattr(metric, "check", None)
    if not callable(check):
        return
    try:
        check(scenario)
    except ValueError as exc:
        raise ConfigError(f"{label}: metric {name!r}: {exc}") from None


async def run_metric(metric: Metric, name: str, conversation: Conversation, scenario: Scenario, *,
                     label: str, timeout: float | None = None) -> MetricResult:
    """``metric``'s result; an exception of the engine (endpoint, cache miss, invalid verdict) passes through,
    anything else is a MetricError naming the metric with its traceback (``sys.exit()`` and KeyboardInterrupt
    included: raised in the engine's threads, they come from the metric, never from a Ctrl-C).

    A sync ``evaluate`` runs in a daemon thread, an async one on the loop. ``timeout`` (seconds, None: none) is
    the metric's deadline: past it the metric is a MetricError and a sync one's thread is abandoned (a thread
    cannot be killed; being a daemon, it does not keep the process alive)."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            if inspect.iscoroutinefunction(metric.evaluate):
                outcome = await metric.evaluate(conversation, scenario)
            else:
                from pytest_llmsim.agents.base import run_in_daemon_thread

                context = contextvars.copy_context()
                outcome = await run_in_daemon_thread(context.run, metric.evaluate, conversation, scenario)
            if inspect.isawaitable(outcome):
                outcome = await outcome
    except LlmsimError:
        raise
    except TimeoutError as exc:
        if not deadline.expired():
            raise MetricError(f"{label}: metric {name!r} raised TimeoutError: {exc}\n"
                              f"{traceback.format_exc(limit=-6)}") from None
        raise MetricError(f"{label}: metric {name!r} did not return within {timeout:g}s (a blocking call, a "
                          "deadlock, a hung service?); the scenario was not scored. A metric gets as long as the "
                          "scenario's conversation: raise the scenario's 'timeout' if it needs longer") from None
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        raise MetricError(f"{label}: metric {name!r} raised {type(exc).__name__}: {exc}\n"
                          f"{traceback.format_exc(limit=-6)}") from None
    if not isinstance(outcome, MetricResult):
        raise MetricError(f"{label}: metric {name!r} returned a {type(outcome).__name__}, not a MetricResult")
    if not outcome.name:
        outcome.name = name
    problem = _result_problem(outcome)
    if problem is not None:
        raise MetricError(f"{label}: metric {name!r} returned an unusable MetricResult: {problem}")
    return outcome


def _result_problem(result: MetricResult) -> str | None:
    """What makes ``result`` unfit for the reports and exports (all JSON, no NaN), or None."""
    score = result.score
    if score is not None and (not isinstance(score, int | float) or isinstance(score, bool)
                              or not math.isfinite(score)):
        return f"score {score!r} is not a finite number or None"
    if result.passed is not None and not isinstance(result.passed, bool):
        return f"passed {result.passed!r} is not true, false or None"
    if not isinstance(result.reason, str):
        return f"reason {result.reason!r} is not a string"
    if not isinstance(result.details, dict):
        return f"details is a {type(result.details).__name__}, not a dict"
    try:
        json.dumps(result.details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"details are not JSON data ({exc})"
    return None


def failed_metrics(results: Sequence[MetricResult | Mapping[str, Any]]) -> list[str]:
    """``name: reason`` of every metric that failed."""
    lines = []
    for result in results:
        data = result.to_dict() if isinstance(result, MetricResult) else result
        if data.get("passed") is False:
            reason = f": {data['reason']}" if data.get("reason") else ""
            lines.append(f"{data.get('name')}{reason}")
    return lines


def conversation_of(transcript: Transcript, scenario: Scenario,
                    turns: Sequence[Mapping[str, Any]] | None = None) -> Conversation:
    """The metrics' view of a conversation; ``turns``: the transcript's dicts when the caller already made them."""
    turns = transcript.to_dicts() if turns is None else turns
    return Conversation(turns=tuple(turns), ended_by=transcript.ended_by,
                        end_reason=transcript.end_reason, scenario_name=scenario.name,
                        variables=dict(scenario.variables), transcript=transcript)

