"""The result of one scenario run: plain data that crosses process boundaries as a dict.

``ScenarioResult.to_dict()`` is what travels on pytest's test report (and so through xdist), what exports
write, and what summaries are computed from; ``from_dict`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

PASSED = "passed"
FAILED = "failed"
ERROR = "error"


@dataclass
class ModelUsage:
    """Calls and tokens of one (role, model) pair in one scenario, split into live and cache-replayed."""

    role: str
    model: str
    live_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        if cached:
            self.cached_calls += 1
            self.cached_prompt_tokens += prompt_tokens
            self.cached_completion_tokens += completion_tokens
        else:
            self.live_calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens


@dataclass
class ScenarioResult:
    scenario: str
    nodeid: str
    source: str
    status: str  # passed | failed | error
    min_score: int
    score: int | None = None
    comment: str = ""
    raw_verdict: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str = ""
    end_reason: str = ""
    error_kind: str = ""
    error_message: str = ""
    duration_seconds: float = 0.0
    usage: list[ModelUsage] = field(default_factory=list)

    @property
    def total_turns(self) -> int:
        return len(self.transcript)

    @property
    def live_calls(self) -> int:
        return sum(u.live_calls for u in self.usage)

    @property
    def cached_calls(self) -> int:
        return sum(u.cached_calls for u in self.usage)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every call, live or replayed (what the conversation consumed)."""
        return sum(u.prompt_tokens + u.cached_prompt_tokens for u in self.usage)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens + u.cached_completion_tokens for u in self.usage)

    @property
    def live_tokens(self) -> int:
        """Tokens of the calls that went to the endpoint (what was paid for)."""
        return sum(u.prompt_tokens + u.completion_tokens for u in self.usage)

    @property
    def replayed_tokens(self) -> int:
        """Tokens of the calls replayed from the cache (what the cache saved)."""
        return sum(u.cached_prompt_tokens + u.cached_completion_tokens for u in self.usage)

    @property
    def fully_cached(self) -> bool:
        """Every LLM call was replayed from the cache (and there was at least one)."""
        return self.cached_calls > 0 and self.live_calls == 0

    def to_dict(self) -> dict[str, Any]:
        # Built field by field: dataclasses.asdict deep-copies every value recursively, which was a tenth of
        # the CPU of replaying a cached suite.
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["transcript"] = [dict(turn) for turn in self.transcript]
        data["usage"] = [dict(vars(usage)) for usage in self.usage]
        data.update(total_turns=self.total_turns, prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens, live_calls=self.live_calls,
                    cached_calls=self.cached_calls, cached=self.fully_cached)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        values["usage"] = [ModelUsage(**u) for u in data.get("usage", [])]
        values["transcript"] = [dict(t) for t in data.get("transcript", [])]
        return cls(**values)
