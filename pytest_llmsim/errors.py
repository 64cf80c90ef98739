"""Errors raised by the llmsim engine.

Hierarchy::

    LlmsimError                  base of everything below
    ├── ScenarioError            a scenario file or scenario is invalid (names file, scenario, field)
    ├── PromptError              a template is missing or uses an undefined variable
    ├── ConfigError              an option or environment value is invalid or missing
    ├── EndpointError            the LLM endpoint failed after bounded retries (unreachable, 4xx, 5xx)
    │   └── BackendMissingError  no endpoint is configured and the local model backend is not installed
    ├── CacheMissError           replay-only mode (record mode ``none``) met an unrecorded call
    │   └── UnjudgedError        record mode ``changed`` met a changed conversation it cannot judge (no endpoint
    │                            configured, or the live-cost cap reached)
    ├── CacheError               the cache directory cannot be opened, read or written (corrupt, not a dir)
    │   └── RecordingError       a recording's verdict or transcript disagrees with its recorded calls
    ├── NoAgentReplyError        the conversation has no non-empty agent turn: nothing to judge
    ├── AgentError               the agent under test (python, http or openai) failed: raised, 5xx, bad reply
    └── VerdictError             the evaluator's reply never parsed as a valid verdict

    ├── MetricError              a metric raised, overran its deadline or returned no usable MetricResult
    └── CalibrationError         (a ConfigError) the judge calibration set cannot be used
    ScenarioRunError             the pytest item's error: the scenario could not be simulated or judged

A failing *score* is not an error: it is a normal result with ``passed == False``.

``ErrorKind`` is the one list of error labels: every class's ``kind`` is a member, and reports, exports and
recordings carry these labels. No pytest import here: the engine, the CLI and the service raise these too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """Stable labels of errors in reports and exports (``errors.LlmsimError.kind`` and a few of the plugin's)."""

    ERROR = "error"  # an engine error of no more specific kind (or a kind this version does not know)
    SCENARIO = "scenario_error"
    PROMPT = "prompt_error"
    CONFIG = "config_error"
    ENDPOINT = "endpoint_error"
    BACKEND_MISSING = "backend_missing"
    CACHE_MISS = "cache_miss"
    UNJUDGED = "unjudged"  # record mode changed: a changed conversation that could not be continued live
    CACHE = "cache_error"
    RECORDING = "recording_error"  # a recording's verdict or transcript disagrees with its recorded calls
    NO_AGENT_REPLY = "no_agent_reply"
    AGENT = "agent_error"
    INVALID_VERDICT = "invalid_verdict"
    METRIC = "metric_error"  # a metric raised or returned no MetricResult
    CALIBRATION = "calibration_error"  # the judge calibration set cannot be used (a usage error of the run)
    INTERNAL = "internal_error"  # a bug or an unexpected library error in the engine
    CRASHED = "crashed"  # the item failed outside the engine (e.g. an xdist worker died)

    @classmethod
    def parse(cls, value: Any) -> ErrorKind | None:
        """``value`` as an ErrorKind; None for no kind (``""``/None), ``ERROR`` for an unknown label."""
        if value in (None, ""):
            return None
        try:
            return cls(str(value))
        except ValueError:
            return cls.ERROR


class LlmsimError(Exception):
    """Base class of all engine errors; ``kind`` is a short stable label used in reports."""

    kind = ErrorKind.ERROR


class ScenarioError(LlmsimError):
    kind = ErrorKind.SCENARIO


class PromptError(LlmsimError):
    kind = ErrorKind.PROMPT


class ConfigError(LlmsimError):
    kind = ErrorKind.CONFIG


class HistoryError(ConfigError):
    """The run history store cannot be used (corrupt, locked too long, a newer schema, not writable): one line
    naming the file and what to do (``history.store``)."""


class EndpointError(LlmsimError):
    kind = ErrorKind.ENDPOINT


class BackendMissingError(EndpointError):
    kind = ErrorKind.BACKEND_MISSING


class CacheMissError(LlmsimError):
    kind = ErrorKind.CACHE_MISS


class UnjudgedError(CacheMissError):
    """Record mode ``changed``: the conversation left its recording (or has none) and continuing it needs a live
    call, which this run may not make (no endpoint configured, or ``llmsim_max_cost_usd`` already spent). Never a
    pass: the change is named, not judged."""

    kind = ErrorKind.UNJUDGED


class CacheError(LlmsimError):
    kind = ErrorKind.CACHE


class RecordingError(CacheError):
    """A recording disagrees with itself: its verdict or transcript is not what its recorded calls give (a
    hand-edited file), so what a reviewer reads is not what a replay decides."""

    kind = ErrorKind.RECORDING


class NoAgentReplyError(LlmsimError):
    kind = ErrorKind.NO_AGENT_REPLY


class AgentError(LlmsimError):
    """The user's agent (code, HTTP service or OpenAI-compatible endpoint) failed to answer a turn.

    A crash in the user's code is not a bad conversation: the item is an error showing the agent's own
    traceback, never a score."""

    kind = ErrorKind.AGENT


class VerdictError(LlmsimError):
    kind = ErrorKind.INVALID_VERDICT

    def __init__(self, message: str, raw_reply: str = "") -> None:
        super().__init__(message)
        self.raw_reply = raw_reply


class MetricError(LlmsimError):
    """A metric raised, overran its deadline or returned something that is not a usable ``MetricResult``: the
    scenario errors, naming it."""

    kind = ErrorKind.METRIC


class CalibrationError(ConfigError):
    """A calibration set or file that cannot be used: names the file and the field."""

    kind = ErrorKind.CALIBRATION


class ScenarioRunError(Exception):
    """The scenario could not be simulated or judged (raised in an item's setup, so pytest reports an ERROR)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result  # the engine's ScenarioResult, when there is one (typed loosely: errors is the bottom)
