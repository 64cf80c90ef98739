"""Throughput at a provider's rate limits: pacing, adaptive concurrency, one budget for the processes of a run.

Why one module: its three mechanisms act on one per-model state (the buckets, the in-flight limit, the file shared
by the processes), and their interplay is the behaviour; split, that state would be passed between modules.

One ``RateLimiter`` serves an ``LLMClient`` (one endpoint); it keeps one ``_Key`` per model, because providers
limit each model on its own. Three mechanisms, cheapest first:

* **Adaptive concurrency** (AIMD): requests in flight per model start at the configured concurrency, halve on a
  429 (once per round of requests: the 429s of requests sent before the last cut do not cut again) and grow by
  ``1/window`` per success. Never more in flight than configured.
* **Pacing before the 429**: a token bucket per resource (requests, tokens) mirrors the provider's. Its rate is
  the static cap (``llmsim_rpm``/``llmsim_tpm``) or the limit the provider announces in ``x-ratelimit-limit-*``,
  whichever is lower; every reply's ``x-ratelimit-remaining-*`` resets the bucket's level to what the provider
  said, minus what was reserved since that request was sent, plus what refilled meanwhile. A request *reserves*
  its units when it asks and waits until its slot (the level may go negative: a queue, not a retry loop). The
  token cost of a request is counted before sending: its prompt estimated from the characters (about 4 per
  token, corrected by the ratio of the replies' ``usage.prompt_tokens`` to the estimates) plus ``max_tokens``,
  as OpenAI reserves it.
* **One budget per machine**: under xdist the buckets live in a small file per model in the session's temp
  folder, read and written under ``fcntl.flock``; every worker draws from it, so 8 workers together stay under
  the limit and a worker that has finished leaves the whole budget to the others. Where ``fcntl`` is missing,
  each process takes an even share of the static caps.

A model with no cap, no rate-limit headers and no 429 seen costs one dict lookup and two counter updates per call.
The figures (429s received, time waited, requests and tokens per minute) are per process (``LimitStats``);
``merge_stats`` adds up those of several processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:  # POSIX only: elsewhere every process keeps its own budget (static caps split evenly)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # None stands for "no fcntl module" here

CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English text with OpenAI's tokenizers
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message (OpenAI's cookbook counts 3-4)
STATS_DECIMALS = 1

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in a rate-limit reset header: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` (OpenAI) or a bare
    number of seconds (Azure, proxies). None when unreadable."""
    if text is None:
        return None
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class Observed:
    """What one reply's ``x-ratelimit-*`` headers said (None: not sent or unreadable). Limits are per minute."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None


def read_headers(headers: Mapping[str, str] | Any | None) -> Observed | None:
    """The rate-limit headers of a reply (OpenAI's and Azure's names), or None when it has none."""
    if headers is None:
        return None
    get = headers.get
    remaining_requests = get("x-ratelimit-remaining-requests")
    remaining_tokens = get("x-ratelimit-remaining-tokens")
    if remaining_requests is None and remaining_tokens is None:
        return None
    return Observed(
        limit_requests=_number(get("x-ratelimit-limit-requests")),
        remaining_requests=_number(remaining_requests),
        reset_requests=parse_duration(get("x-ratelimit-reset-requests")),
        limit_tokens=_number(get("x-ratelimit-limit-tokens")),
        remaining_tokens=_number(remaining_tokens),
        reset_tokens=parse_duration(get("x-ratelimit-reset-tokens")),
    )


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> float:
    """A cheap count of a request's prompt tokens: characters / 4 plus a few per message (no tokenizer: this runs
    before every paced request)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += len(str(content))
    return chars / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * len(messages) + 3


# -- statistics -------------------------------------------------------------------------------------------------
@dataclass
class LimitStats:
    """One process's figures. ``first_sent``/``last_done`` are wall-clock times (comparable between the processes of
    one machine): the span the per-minute rates are measured over."""

    requests: int = 0  # answered with a completion
    rate_limited: int = 0  # answered 429
    wait_seconds: float = 0.0  # spent waiting for the limiter (pacing, a 429's pause, the concurrency window)
    tokens: int = 0  # usage of the answered requests (prompt + completion)
    reserved_tokens: float = 0.0  # what they cost against a tokens-per-minute limit (estimated prompt + max_tokens)
    first_sent: float = 0.0
    last_done: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_stats(parts: Iterable[Mapping[str, Any] | LimitStats | None]) -> LimitStats:
    """The figures of several processes as one (sums; the span from the first request sent to the last answered)."""
    total = LimitStats()
    for part in parts:
        if part is None:
            continue
        data = part.to_dict() if isinstance(part, LimitStats) else part
        try:
            total.requests += int(data.get("requests") or 0)
            total.rate_limited += int(data.get("rate_limited") or 0)
            total.wait_seconds += float(data.get("wait_seconds") or 0.0)
            total.tokens += int(data.get("tokens") or 0)
            total.reserved_tokens += float(data.get("reserved_tokens") or 0.0)
            first, last = float(data.get("first_sent") or 0.0), float(data.get("last_done") or 0.0)
        except (TypeError, ValueError, AttributeError):
            continue  # a worker's malformed figures: left out rather than failing the report
        if first:
            total.first_sent = first if not total.first_sent else min(total.first_sent, first)
        total.last_done = max(total.last_done, last)
    return total


def throughput_fields(stats: LimitStats) -> dict[str, Any]:
    """The run summary's rate-limit fields (``summary.RunSummary``) from merged figures."""
    span = stats.last_done - stats.first_sent if stats.first_sent else 0.0
    per_minute = 60.0 / span if span > 0 else None
    return {
        "rate_limited_requests": stats.rate_limited,
        "limiter_wait_seconds": round(stats.wait_seconds, STATS_DECIMALS),
        "effective_rpm": None if per_minute is None else round(stats.requests * per_minute, STATS_DECIMALS),
        "effective_tpm": None if per_minute is None else round(stats.tokens * per_minute, STATS_DECIMALS),
        "reserved_tpm": None if per_minute is None else round(stats.reserved_tokens * per_minute, STATS_DECIMALS),
    }


# -- the budget: buckets for requests and tokens, in memory or in a file shared by processes -------------------
_FIELDS = ("learned_requests", "learned_tokens", "level_requests", "level_tokens", "cap_requests", "cap_tokens",
           "stamp", "pause_until", "reserved_requests", "reserved_tokens", "applied_mark", "initialised")
_LAYOUT = struct.Struct(f"<{len(_FIELDS)}d")


@dataclass
class Budget:
    """The buckets of one model. Rates are per second; ``learned_*`` come from the provider's headers (0: none).
    ``reserved_*`` count every reservation ever made (all processes); ``applied_mark`` is the reservation count of
    the request whose headers were applied last (older replies carry staler news and are ignored)."""

    learned_requests: float = 0.0
    learned_tokens: float = 0.0
    level_requests: float = 0.0
    level_tokens: float = 0.0
    cap_requests: float = 0.0
    cap_tokens: float = 0.0
    stamp: float = 0.0
    pause_until: float = 0.0
    reserved_requests: float = 0.0
    reserved_tokens: float = 0.0
    applied_mark: float = 0.0
    initialised: float = 0.0

    def pack(self) -> bytes:
        return _LAYOUT.pack(*(getattr(self, name) for name in _FIELDS))

    @classmethod
    def unpack(cls, data: bytes) -> Budget:
        if len(data) != _LAYOUT.size:
            return cls()
        values = _LAYOUT.unpack(data)
        if not all(math.isfinite(v) for v in values):
            return cls()
        return cls(*values)


class _MemoryStore:
    """The budget of one process."""

    def __init__(self) -> None:
        self.budget = Budget()

    def load(self) -> Budget:
        return self.budget

    def save(self, budget: Budget) -> None:
        self.budget = budget

    def unlock(self) -> None:
        pass

    def close(self) -> None:
        pass


class _FileStore:
    """The budget in a file every process of the run opens; ``load`` locks it until ``save``/``unlock``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def load(self) -> Budget:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return Budget.unpack(os.pread(self.fd, _LAYOUT.size, 0))

    def save(self, budget: Budget) -> None:
        try:
            os.pwrite(self.fd, budget.pack(), 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def shared_budgets_supported() -> bool:
    return fcntl is not None


@dataclass(slots=True)
class Ticket:
    """One request's pass through the limiter, handed back with its reply."""

    key: _Key
    seq: int
    mark: float = 0.0  # the budget's count of reserved requests after this one's reservation (0: not paced)
    tokens_mark: float = 0.0  # and of reserved tokens
    tokens: float = 0.0  # its reserved token cost
    estimate: float = 0.0  # its raw prompt estimate (before the calibration ratio)
    sent_at: float = 0.0  # monotonic, after the wait


@dataclass
class _Key:
    """One model: its concurrency window and its budget."""

    model: str
    store: _MemoryStore | _FileStore
    window: float
    max_in_flight: int
    in_flight: int = 0
    seq: int = 0
    last_cut: int = 0
    paced: bool = False  # a cap, a rate-limit header or a 429 seen: requests go through the budget
    ratio: float = 1.0  # actual prompt tokens / estimate, learned from the replies' usage
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    pacer: asyncio.Lock = field(default_factory=asyncio.Lock)  # the queue of requests waiting for the budget


class RateLimiter:
    """Pacing and adaptive concurrency for one endpoint's requests, per model. Create and use on one event loop.

    ``rpm``/``tpm``: static caps for the whole run (every process of ``shared_dir``'s run together); ``workers``:
    the processes sharing them, used only where a shared budget is not possible (then each takes an even share).
    ``concurrency``: the most requests in flight per model in this process (None: unbounded)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, concurrency: int | None = None,
                 shared_dir: Path | None = None, workers: int = 1, endpoint: str = "") -> None:
        share = 1 if shared_dir is not None and shared_budgets_supported() else max(1, workers)
        self.rpm = rpm / share if rpm else None
        self.tpm = tpm / share if tpm else None
        self.concurrency = concurrency
        self.shared_dir = shared_dir if shared_budgets_supported() else None
        self.endpoint = endpoint
        self.stats = LimitStats()
        self._keys: dict[str, _Key] = {}

    # -- the hot path ---------------------------------------------------------------------------------------
    async def acquire(self, model: str = "", messages: Sequence[Mapping[str, Any]] = (),
                      max_tokens: int = 0) -> Ticket:
        """Wait until a request to ``model`` may go; the ticket goes back to ``finish`` with the reply."""
        key = self._keys.get(model)
        if key is None:
            key = self._new_key(model)
        waited = 0.0
        if key.in_flight >= int(key.window) and key.in_flight > 0:
            waited += await self._wait_for_window(key)
        key.in_flight += 1
        key.seq += 1
        ticket = Ticket(key, key.seq)
        try:
            if key.paced:
                waited += await self._reserve(key, ticket, messages, max_tokens)
        except BaseException:
            self._release(key)
            raise
        if waited:
            self.stats.wait_seconds += waited
        if not self.stats.first_sent:
            self.stats.first_sent = time.time()
        return ticket

    def finish(self, ticket: Ticket, status: int, headers: Any = None, body: Any = None) -> None:
        """A request's outcome: ``status`` 200 with the reply's ``body``, an HTTP error status, or 0 (no reply)."""
        key = ticket.key
        self._release(key)
        if status == 200:
            stats = self.stats
            stats.requests += 1
            stats.last_done = time.time()
            usage = body.get("usage") if isinstance(body, dict) else None
            if isinstance(usage, dict):
                prompt = usage.get("prompt_tokens")
                stats.tokens += _int(prompt) + _int(usage.get("completion_tokens"))
                if ticket.estimate and isinstance(prompt, int) and prompt > 0:
                    # The upper envelope of actual / estimated: an estimate too high only holds tokens back until
                    # the next reply's headers; one too low can cost a 429.
                    sample = min(4.0, max(0.25, prompt / ticket.estimate))
                    key.ratio = max(sample, 0.95 * key.ratio + 0.05 * sample)
            stats.reserved_tokens += ticket.tokens
            if key.window < key.max_in_flight:
                key.window = min(key.max_in_flight, key.window + 1.0 / key.window)
                self._wake(key)
        elif status == 429:
            self.stats.rate_limited += 1
            if ticket.seq > key.last_cut:  # one cut per round: the other 429s of this round were already in flight
                key.window = max(1.0, key.window / 2)
                key.last_cut = key.seq
        observed = read_headers(headers) if status else None
        if observed is not None:
            self._observe(key, ticket, observed)

    def back_off(self, seconds: float, model: str | None = None) -> None:
        """A 429 asked to wait ``seconds`` (Retry-After or the backoff): no request to that model (every model
        when None) is sent before then, by any process sharing the budget."""
        until = time.monotonic() + max(0.0, seconds)
        keys = [self._keys[model]] if model is not None and model in self._keys else list(self._keys.values())
        if model is not None and model not in self._keys:
            keys = [self._new_key(model)]
        for key in keys:
            key.paced = True
            budget = key.store.load()
            budget.pause_until = max(budget.pause_until, until)
            key.store.save(budget)

    def close(self) -> None:
        for key in self._keys.values():
            key.store.close()

    # -- the pieces ---------------------------------------------------------------------------------------------
    def _new_key(self, model: str) -> _Key:
        store: _MemoryStore | _FileStore = _MemoryStore()
        if self.shared_dir is not None:
            digest = hashlib.sha256(f"{self.endpoint}\0{model}".encode()).hexdigest()[:20]
            try:
                store = _FileStore(self.shared_dir / f"rate-{digest}.bin")
            except OSError:
                store = _MemoryStore()  # no shared folder: this process paces on its own
        limit = self.concurrency if self.concurrency else 1 << 30
        key = _Key(model, store, float(limit), limit, paced=bool(self.rpm or self.tpm))
        self._keys[model] = key
        return key

    async def _wait_for_window(self, key: _Key) -> float:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        while key.in_flight >= int(key.window) and key.in_flight > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            key.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(key)  # it was this one's turn: pass it on
                raise
        return time.monotonic() - started

    def _release(self, key: _Key) -> None:
        key.in_flight -= 1
        self._wake(key)

    @staticmethod
    def _wake(key: _Key) -> None:
        while key.waiters and key.in_flight < int(key.window):
            waiter = key.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _rates(self, budget: Budget) -> tuple[float, float]:
        """Requests and tokens per second: the lower of the static cap and the provider's announced limit."""
        rates = []
        for static, learned in ((self.rpm, budget.learned_requests), (self.tpm, budget.learned_tokens)):
            candidates = [r for r in (static / 60.0 if static else 0.0, learned) if r > 0]
            rates.append(min(candidates) if candidates else 0.0)
        return rates[0], rates[1]

    def _refill(self, budget: Budget, now: float) -> tuple[float, float]:
        rate_r, rate_t = self._rates(budget)
        if not budget.initialised:
            # Static caps start with one request and one second of tokens; the provider's headers raise the caps.
            budget.initialised = 1.0
            budget.cap_requests = max(budget.cap_requests, 1.0)
            budget.cap_tokens = max(budget.cap_tokens, rate_t)
            budget.level_requests, budget.level_tokens, budget.stamp = budget.cap_requests, budget.cap_tokens, now
        elapsed = max(0.0, now - budget.stamp)
        budget.stamp = now
        if rate_r:
            budget.level_requests = min(budget.cap_requests, budget.level_requests + elapsed * rate_r)
        if rate_t:
            budget.level_tokens = min(budget.cap_tokens, budget.level_tokens + elapsed * rate_t)
        return rate_r, rate_t

    async def _reserve(self, key: _Key, ticket: Ticket, messages: Sequence[Mapping[str, Any]],
                       max_tokens: int) -> float:
        """Wait until the budget holds one request and this one's tokens, then take them; returns the seconds
        waited. Only the head of this process's queue (``key.pacer``, first come first served) polls the budget, so
        a correction from a reply applies to the very next request, and N waiting requests cost one poll per slot,
        not N."""
        waited = 0.0
        async with key.pacer:
            store = key.store
            while True:
                budget = store.load()
                now = time.monotonic()
                delay = budget.pause_until - now
                if delay <= 0:
                    rate_r, rate_t = self._refill(budget, now)
                    if rate_t and not ticket.estimate:
                        ticket.estimate = estimate_prompt_tokens(messages)
                        ticket.tokens = ticket.estimate * key.ratio + max(0, max_tokens)
                    if rate_r and budget.level_requests < min(1.0, budget.cap_requests):
                        delay = (min(1.0, budget.cap_requests) - budget.level_requests) / rate_r
                    if rate_t and budget.level_tokens < (need := min(ticket.tokens, budget.cap_tokens)):
                        delay = max(delay, (need - budget.level_tokens) / rate_t)
                if delay <= 0:
                    if rate_r:
                        budget.level_requests -= 1.0
                    if rate_t:
                        budget.level_tokens -= ticket.tokens
                    budget.reserved_requests += 1.0
                    budget.reserved_tokens += ticket.tokens
                    ticket.mark, ticket.tokens_mark = budget.reserved_requests, budget.reserved_tokens
                    store.save(budget)
                    break
                store.unlock()
                delay = max(delay, 0.001)
                await asyncio.sleep(delay)
                waited += delay
        ticket.sent_at = time.monotonic()
        return waited

    def _observe(self, key: _Key, ticket: Ticket, observed: Observed) -> None:
        """Take the provider's word: its limits become the rates, its remaining counts the levels."""
        store = key.store
        budget = store.load()
        now = time.monotonic()
        if observed.limit_requests:
            budget.learned_requests = observed.limit_requests / 60.0
        if observed.limit_tokens:
            budget.learned_tokens = observed.limit_tokens / 60.0
        rate_r, rate_t = self._refill(budget, now)
        if ticket.mark and ticket.mark > budget.applied_mark:
            budget.applied_mark = ticket.mark
            # What refilled between the provider's count and now is not credited: the count was made when the
            # request arrived, which may be well after ``sent_at`` on a busy machine. The bucket keeps that much
            # (about a round trip's worth) in reserve; the rate, and so the throughput, is unchanged.
            later_requests = budget.reserved_requests - ticket.mark
            if observed.remaining_requests is not None and rate_r:
                budget.cap_requests = max(budget.cap_requests, observed.remaining_requests + 1.0)
                level = observed.remaining_requests - later_requests
                budget.level_requests = min(budget.cap_requests, level)
            if observed.remaining_tokens is not None and rate_t:
                budget.cap_tokens = max(budget.cap_tokens, observed.remaining_tokens + ticket.tokens)
                later_tokens = budget.reserved_tokens - ticket.tokens_mark
                level = observed.remaining_tokens - later_tokens
                budget.level_tokens = min(budget.cap_tokens, level)
        for remaining, reset, rate in ((observed.remaining_requests, observed.reset_requests, rate_r),
                                       (observed.remaining_tokens, observed.reset_tokens, rate_t)):
            if not rate and remaining is not None and remaining < 1 and reset:
                budget.pause_until = max(budget.pause_until, now + reset)  # no limit announced: wait out the window
        store.save(budget)
        key.paced = True


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
