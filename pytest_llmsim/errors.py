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

A failing *score* is not an error: it is a normal result with ``passed == False``.
"""

from __future__ import annotations


class LlmsimError(Exception):
    """Base class of all engine errors; ``kind`` is a short stable label used in reports."""

    kind = "error"


class ScenarioError(LlmsimError):
    kind = "scenario_error"


class PromptError(LlmsimError):
    kind = "prompt_error"


class ConfigError(LlmsimError):
    kind = "config_error"


class EndpointError(LlmsimError):
    kind = "endpoint_error"


class BackendMissingError(EndpointError):
    kind = "backend_missing"


class CacheMissError(LlmsimError):
    kind = "cache_miss"


class UnjudgedError(CacheMissError):
    """Record mode ``changed``: the conversation left its recording (or has none) and continuing it needs a live
    call, which this run may not make (no endpoint configured, or ``llmsim_max_cost_usd`` already spent). Never a
    pass: the change is named, not judged."""

    kind = "unjudged"


class CacheError(LlmsimError):
    kind = "cache_error"


class RecordingError(CacheError):
    """A recording disagrees with itself: its verdict or transcript is not what its recorded calls give (a
    hand-edited file), so what a reviewer reads is not what a replay decides."""

    kind = "recording_error"


class NoAgentReplyError(LlmsimError):
    kind = "no_agent_reply"


class AgentError(LlmsimError):
    """The user's agent (code, HTTP service or OpenAI-compatible endpoint) failed to answer a turn.

    A crash in the user's code is not a bad conversation: the item is an error showing the agent's own
    traceback, never a score."""

    kind = "agent_error"


class VerdictError(LlmsimError):
    kind = "invalid_verdict"

    def __init__(self, message: str, raw_reply: str = "") -> None:
        super().__init__(message)
        self.raw_reply = raw_reply
