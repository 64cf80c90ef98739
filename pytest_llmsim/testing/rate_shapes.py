"""Provider-shaped rate limits for the scripted server (``openai_server.py``'s ``limits``).

A limit is a mapping ``{"shape": ..., "rpm": 1200, "tpm": 150000, ...}``; per model, one counter per resource
(requests, tokens). A request costs 1 request and its prompt words plus its ``max_tokens``, charged on arrival;
one that does not fit is answered 429 at once and costs nothing. The shapes, as providers and gateways enforce
them:

* ``bucket`` (the default; OpenAI): refilled continuously at the per-minute limit, holding ``burst`` seconds of it
  (default 60). Headers ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*``, ``x-ratelimit-reset-*`` (time until
  full); a 429 carries ``retry-after-ms`` and ``retry-after`` (time until the request fits).
* ``fixed``: a window of ``window`` seconds (default 60) starting at the first request, ``limit * window / 60``
  per window. The same three headers (reset: until the window ends); a 429 carries ``retry-after`` = the reset.
* ``sliding``: at most ``limit * window / 60`` in any ``window`` seconds (default 60), as gateways count. Reset:
  until the oldest request leaves the window; a 429 carries ``retry-after: <retry_after>`` (default 1), whatever
  the reset, as such gateways do.
* ``per_second`` (Azure OpenAI): the per-minute quota enforced over windows of ``window`` seconds (default 1;
  Azure uses 1 or 10), ``limit * window / 60`` per window. Only ``x-ratelimit-remaining-*`` on every answer; a
  429 carries ``retry-after-ms`` and ``retry-after``.
* ``retry_after``: a bucket that sends no rate-limit header; a 429 carries only ``retry-after`` (whole seconds).
* ``bare``: a bucket that sends no header at all, 429s included.

``retry_after`` (sliding) and the fractional seconds of ``retry-after`` let a benchmark scale time: a shape with
``window`` 6 and ``retry_after`` 0.1 at ten times the rpm is the 60 s window with ``retry-after: 1``, ten times
faster.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

SHAPES = ("bucket", "fixed", "sliding", "per_second", "retry_after", "bare")
_KEYS = {"shape", "rpm", "tpm", "burst", "window", "retry_after"}
_DEFAULT_WINDOW = {"fixed": 60.0, "sliding": 60.0, "per_second": 1.0}


def duration_text(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def _seconds_text(seconds: float) -> str:
    """``retry-after``: whole seconds when the value is whole, else up to milliseconds (a time-scaled benchmark)."""
    return str(int(seconds)) if seconds == int(seconds) else f"{round(seconds, 3):g}"


class _Counter:
    """One resource of one model under one shape: ``wait_for`` (0: fits), ``charge``, ``remaining``, ``reset``."""

    def __init__(self, shape: str, limit: float, burst: float, window: float, now: float) -> None:
        self.shape = shape
        self.limit = limit
        self.rate = limit / 60.0
        self.window = window
        self.capacity = max(1.0, self.rate * (burst if shape in ("bucket", "retry_after", "bare") else window))
        self.level = self.capacity  # bucket: what it holds
        self.stamp = now
        self.start = now  # fixed and per_second: when the current window began
        self.used = 0.0  # fixed and per_second: charged in the current window
        self.log: deque[tuple[float, float]] = deque()  # sliding: (time, cost) of the requests in the window
        self.in_window = 0.0

    def advance(self, now: float) -> None:
        if self.shape in ("fixed", "per_second"):
            if now >= self.start + self.window:
                self.start += math.floor((now - self.start) / self.window) * self.window
                self.used = 0.0
        elif self.shape == "sliding":
            while self.log and self.log[0][0] <= now - self.window:
                self.in_window -= self.log.popleft()[1]
        else:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def remaining(self) -> float:
        if self.shape in ("fixed", "per_second"):
            return self.capacity - self.used
        if self.shape == "sliding":
            return self.capacity - self.in_window
        return self.level

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (a cost above the capacity needs an empty window / a full bucket)."""
        need = min(cost, self.capacity)
        if self.remaining() >= need:
            return 0.0
        if self.shape in ("fixed", "per_second"):
            return self.start + self.window - now
        if self.shape == "sliding":
            freed, moment = self.remaining(), now
            for at, units in self.log:
                freed += units
                moment = at + self.window
                if freed >= need:
                    break
            return max(0.0, moment - now)
        return (need - self.level) / self.rate

    def reset(self, now: float) -> float:
        """The ``x-ratelimit-reset-*`` value: until full (bucket), until the window ends (fixed), until the oldest
        request leaves (sliding)."""
        if self.shape in ("fixed", "per_second"):
            return max(0.0, self.start + self.window - now) if self.used else 0.0
        if self.shape == "sliding":
            return max(0.0, self.log[0][0] + self.window - now) if self.log else 0.0
        return (self.capacity - self.level) / self.rate

    def charge(self, cost: float, now: float) -> None:
        if self.shape in ("fixed", "per_second"):
            self.used += cost
        elif self.shape == "sliding":
            self.log.append((now, cost))
            self.in_window += cost
        else:
            self.level -= cost


class Limits:
    """Requests-per-minute and tokens-per-minute limits per model, in one of ``SHAPES`` (see the module docstring).
    Not thread-safe: the server calls it under its lock."""

    def __init__(self, spec: dict[str, Any]) -> None:
        unknown = set(spec) - _KEYS
        if unknown:
            raise ValueError(f"unknown limits key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}")
        self.shape = str(spec.get("shape") or "bucket")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown limits shape {self.shape!r}; known: {', '.join(SHAPES)}")
        self.rpm = float(spec["rpm"]) if spec.get("rpm") else None
        self.tpm = float(spec["tpm"]) if spec.get("tpm") else None
        self.burst = float(spec.get("burst", 60.0))
        self.window = float(spec.get("window", _DEFAULT_WINDOW.get(self.shape, 60.0)))
        self.retry_after = float(spec.get("retry_after", 1.0))
        if min(self.burst, self.window, self.retry_after) <= 0 or any(
                v is not None and v <= 0 for v in (self.rpm, self.tpm)):
            raise ValueError("limits: rpm, tpm, burst, window and retry_after must be positive")
        self._counters: dict[str, tuple[_Counter | None, _Counter | None]] = {}

    def admit(self, model: str, cost: float, now: float) -> tuple[str | None, float, dict[str, str]]:
        """``(None, 0, headers)`` when the request fits (and is charged), else ``(resource, wait, headers)``: the
        refused resource, the seconds until it would fit, and the headers of the 429 (its shape's)."""
        counters = self._counters.get(model)
        if counters is None:
            counters = self._counters[model] = (self._counter(self.rpm, now), self._counter(self.tpm, now))
        requests, tokens = counters
        refused, wait = None, 0.0
        for name, counter, units in (("requests", requests, 1.0), ("tokens", tokens, cost)):
            if counter is None:
                continue
            counter.advance(now)
            needed = counter.wait_for(units, now)
            if needed > wait or (needed > 0 and refused is None):
                refused, wait = name, needed
        if refused is None:
            for counter, units in ((requests, 1.0), (tokens, cost)):
                if counter is not None:
                    counter.charge(units, now)
        headers = self._headers(requests, tokens, now)
        if refused is not None:
            headers.update(self._retry_headers(wait))
        return refused, wait, headers

    def _counter(self, limit: float | None, now: float) -> _Counter | None:
        return _Counter(self.shape, limit, self.burst, self.window, now) if limit else None

    def _headers(self, requests: _Counter | None, tokens: _Counter | None, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.shape in ("retry_after", "bare"):
            return headers
        for name, counter in (("requests", requests), ("tokens", tokens)):
            if counter is None:
                continue
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(counter.remaining())))
            if self.shape != "per_second":  # Azure sends the remaining counts only
                headers[f"x-ratelimit-limit-{name}"] = str(int(counter.limit))
                headers[f"x-ratelimit-reset-{name}"] = duration_text(counter.reset(now))
        return headers

    def _retry_headers(self, wait: float) -> dict[str, str]:
        if self.shape == "bare":
            return {}
        if self.shape == "sliding":
            return {"retry-after": _seconds_text(self.retry_after)}
        if self.shape == "retry_after":
            return {"retry-after": str(max(1, math.ceil(wait)))}
        if self.shape == "fixed":
            return {"retry-after": _seconds_text(max(0.001, round(wait, 3)))}
        return {"retry-after-ms": str(max(1, math.ceil(wait * 1000))), "retry-after": str(max(1, math.ceil(wait)))}

    def limit(self, resource: str) -> float:
        return (self.rpm if resource == "requests" else self.tpm) or 0.0
