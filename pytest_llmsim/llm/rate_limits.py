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
import contextvars
import hashlib
import heapq
import itertools
import math
import os
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import Timeout

try:  # POSIX only: elsewhere every process keeps its own budget (static caps split evenly)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # None stands for "no fcntl module" here

CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English text with OpenAI's tokenizers
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message (OpenAI's cookbook counts 3-4)
STATS_DECIMALS = 1
PROBE_AFTER_S = 0.25  # a spent window whose reset was not announced (or has passed): probe again after this
ADAPTIVE_MIN_RATE = 0.05  # requests per second: adaptive pacing never goes slower
ADAPTIVE_GROWTH = 1.0 + 1.0 / 32  # per success: from half the rate back to the rate in about 22 successes
_RECENT_S = 5.0  # the span the rate that met a 429 is measured over

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


# -- a conversation's waiting -------------------------------------------------------------------------------
class LimitClock:
    """What one scenario's run (its conversation and its metrics' calls) has waited on a rate limit.

    ``priority`` orders every limiter queue (lowest first): the time the scenario started, so a started
    conversation is never starved by newer ones. While a request of the scenario waits (queued for the limiter,
    or sitting out a 429's pause), the conversation's own deadline (``bind``) is stopped: its timeout bounds the
    conversation's progress, not its queueing. ``bound`` (``llmsim_rate_limit_wait``) caps the waiting in all, so
    a conversation stuck behind a limit forever still ends, in an error naming the limit (None: no cap)."""

    def __init__(self, bound: float | None, priority: float | None = None) -> None:
        self.bound = bound
        self.priority = time.monotonic() if priority is None else priority
        self.waited = 0.0  # seconds, waits already over
        self.rate_limited = 0  # requests of this scenario answered 429
        self._depth = 0  # waits in progress (a code agent may make calls in parallel)
        self._since = 0.0
        self._deadline: Timeout | None = None
        self._deadline_left: float | None = None  # the deadline's seconds left when the current wait began

    def bind(self, deadline: Timeout | None) -> None:
        """Stop ``deadline`` (an entered ``asyncio.timeout``) during this clock's waits; None: unbind."""
        self._deadline = deadline
        self._deadline_left = None

    def left(self) -> float | None:
        """Seconds of waiting still allowed (None: no bound)."""
        if self.bound is None:
            return None
        current = time.monotonic() - self._since if self._depth else 0.0
        return self.bound - self.waited - current

    def exhausted(self) -> bool:
        left = self.left()
        return left is not None and left <= 0.01

    def total(self) -> float:
        return self.waited + (time.monotonic() - self._since if self._depth else 0.0)

    def begin(self) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self._since = time.monotonic()
        deadline = self._deadline
        if deadline is not None and not deadline.expired() and (when := deadline.when()) is not None:
            loop = asyncio.get_running_loop()
            self._deadline_left = max(0.0, when - loop.time())
            left = self.left()
            deadline.reschedule(None if left is None else loop.time() + max(0.0, left))

    def end(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        self.waited += time.monotonic() - self._since
        deadline, self._deadline_left, left = self._deadline, None, self._deadline_left
        if deadline is not None and left is not None and not deadline.expired():
            deadline.reschedule(asyncio.get_running_loop().time() + left)

    def message(self, label: str, where: str, model: str = "", announced: float | None = None) -> str:
        """The error of a scenario whose waiting reached ``bound``, or (``announced``: the seconds a provider's
        reset or Retry-After asked for) would have before the limit opens."""
        which = f" (model {model!r})" if model else ""
        ahead = ("" if announced is None else
                 f"the limit announced a wait of {announced:.0f}s, more than the {max(0.0, self.left() or 0.0):.0f}s "
                 "this scenario may still wait, so it stopped at once; ")
        return (f"{label}: gave up waiting for the rate limit of {where}{which}: {ahead}this scenario's "
                f"requests waited {self.total():.0f}s in all (queued for the limiter or sitting out a 429's pause; "
                f"{self.rate_limited} answered 429), llmsim_rate_limit_wait={self.bound:g}s. That time does not "
                "count against the conversation's timeout; the limit let too few requests through: check the "
                "provider's quota, lower --llmsim-concurrency, or raise --llmsim-rate-limit-wait")


LIMIT_CLOCK: contextvars.ContextVar[LimitClock | None] = contextvars.ContextVar("llmsim_limit_clock", default=None)


class RateLimitWaitExceeded(Exception):
    """A request's wait for the limiter outlasted its scenario's ``LimitClock.bound`` (the client names it), or
    the provider announced a wait longer than what is left of it (``announced``, seconds)."""

    def __init__(self, announced: float | None = None) -> None:
        super().__init__(announced)
        self.announced = announced


async def _queued(heap: list[tuple[float, int, asyncio.Future[None]]], priority: float,
                  order: itertools.count[int], pass_on: Callable[[], None]) -> None:
    """Wait in ``heap`` (lowest priority first, then arrival) until the future is set; cancelled after it was set,
    ``pass_on`` hands what it was given to the next."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    heapq.heappush(heap, (priority, next(order), waiter))
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            pass_on()
        raise


class _PriorityGate:
    """A lock handed to its waiters lowest priority first (FIFO among equals): the limiter's queue."""

    def __init__(self) -> None:
        self.held = False
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: float) -> None:
        if not self.held and not self._heap:
            self.held = True
            return
        await _queued(self._heap, priority, self._order, self.release)

    def release(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)[2]
            if not waiter.done():
                waiter.set_result(None)  # ownership passes on; the gate stays held
                return
        self.held = False


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
           "stamp", "pause_until", "reserved_requests", "reserved_tokens", "applied_mark", "initialised",
           "window_requests", "window_tokens", "reset_at_requests", "reset_at_tokens", "implied_requests",
           "implied_tokens")
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
    # 1: the provider counts this resource in windows, not a continuously refilled bucket (``_bucket_like``): the
    # level is what its headers said, refilled only at ``reset_at_*`` (monotonic time) as they announced.
    window_requests: float = 0.0
    window_tokens: float = 0.0
    reset_at_requests: float = 0.0
    reset_at_tokens: float = 0.0
    # The capacity the first reply implied (``_implied_capacity``; 0: none yet): a bucket's stays the same.
    implied_requests: float = 0.0
    implied_tokens: float = 0.0

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
    # Requests waiting for the concurrency window, oldest conversation first: (priority, order, future).
    waiters: list[tuple[float, int, asyncio.Future[None]]] = field(default_factory=list)
    order: itertools.count[int] = field(default_factory=itertools.count)
    pacer: _PriorityGate = field(default_factory=_PriorityGate)  # the queue of requests waiting for the budget
    announced: bool = False  # a reply named the provider's limit (x-ratelimit-limit-*)
    # Adaptive pacing (requests per second, 0: none), for 429s that come without any limit announced (only
    # retry-after, or nothing): halved once per round of 429s, grown by ADAPTIVE_GROWTH per success.
    adaptive: float = 0.0
    next_slot: float = 0.0
    last_rate_cut: int = 0
    done: deque[float] = field(default_factory=lambda: deque(maxlen=512))  # monotonic times of successes
    # Paced requests of this process not answered yet: their budget mark -> their tokens. A window's count from a
    # reply leaves out those of them reserved earlier that had not reached the provider yet.
    unanswered: dict[float, float] = field(default_factory=dict)
    probe_after: float = PROBE_AFTER_S  # a spent window of unknown reset: the next probe (a 429's pause, if less)


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
        """Wait until a request to ``model`` may go; the ticket goes back to ``finish`` with the reply. The
        waiting is the scenario's (``LIMIT_CLOCK``): in its priority order, off its conversation's deadline, and
        bounded by its ``bound`` (``RateLimitWaitExceeded``)."""
        key = self._keys.get(model)
        if key is None:
            key = self._new_key(model)
        if not self.stats.first_sent:
            self.stats.first_sent = time.time()
        if not key.paced and not key.waiters and (key.in_flight < int(key.window) or not key.in_flight):
            key.in_flight += 1  # the fast path: nothing to wait for
            key.seq += 1
            return Ticket(key, key.seq)
        clock = LIMIT_CLOCK.get()
        priority = clock.priority if clock is not None else time.monotonic()
        started = time.monotonic()
        if clock is not None:
            clock.begin()
        try:
            left = clock.left() if clock is not None else None
            wait = asyncio.timeout(None if left is None else max(0.0, left))
            try:
                async with wait:
                    ticket = await self._admit(key, priority, messages, max_tokens)
            except TimeoutError:
                if wait.expired():
                    raise RateLimitWaitExceeded from None
                raise
        finally:
            if clock is not None:
                clock.end()
        self.stats.wait_seconds += time.monotonic() - started
        return ticket

    async def _admit(self, key: _Key, priority: float, messages: Sequence[Mapping[str, Any]],
                     max_tokens: int) -> Ticket:
        if key.waiters or (key.in_flight >= int(key.window) and key.in_flight):
            await self._wait_for_window(key, priority)  # returns with its place counted in ``in_flight``
        else:
            key.in_flight += 1
        key.seq += 1
        ticket = Ticket(key, key.seq)
        try:
            if key.paced:
                await self._reserve(key, ticket, messages, max_tokens, priority)
        except BaseException:
            self._release(key)
            raise
        return ticket

    def finish(self, ticket: Ticket, status: int, headers: Any = None, body: Any = None) -> None:
        """A request's outcome: ``status`` 200 with the reply's ``body``, an HTTP error status, or 0 (no reply)."""
        key = ticket.key
        self._release(key)
        key.unanswered.pop(ticket.mark, None)
        observed = read_headers(headers) if status else None
        if observed is not None and (observed.limit_requests or observed.limit_tokens):
            key.announced = True
        if status == 200:
            stats = self.stats
            stats.requests += 1
            stats.last_done = time.time()
            key.done.append(time.monotonic())
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
            if key.adaptive:
                key.adaptive *= ADAPTIVE_GROWTH
            if key.window < key.max_in_flight:
                key.window = min(key.max_in_flight, key.window + 1.0 / key.window)
                self._wake(key)
        elif status == 429:
            self.stats.rate_limited += 1
            if ticket.seq > key.last_cut:  # one cut per round: the other 429s of this round were already in flight
                key.window = max(1.0, key.window / 2)
                key.last_cut = key.seq
            recent = key.adaptive or self._recent_rate(key)
            if not (key.announced or self.rpm or self.tpm) and ticket.seq > key.last_rate_cut and recent:
                # A 429 and no limit known: pace at half the rate that got it (once per round, as above).
                key.adaptive = max(ADAPTIVE_MIN_RATE, 0.5 * recent)
                key.last_rate_cut = key.seq
                key.paced = True
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
            key.probe_after = min(PROBE_AFTER_S, max(0.01, seconds))
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
        paced = bool(self.rpm or self.tpm)
        if isinstance(store, _FileStore):  # a worker starting late: the others may have learned the limit already
            budget = store.load()
            store.unlock()
            paced = paced or bool(budget.applied_mark or budget.pause_until)
        key = _Key(model, store, float(limit), limit, paced=paced)
        self._keys[model] = key
        return key

    @staticmethod
    def _recent_rate(key: _Key) -> float:
        """Successes per second over the last ``_RECENT_S`` seconds (0 when too few to tell: then the 429s are
        answered by the pause and the concurrency window alone)."""
        now = time.monotonic()
        recent = [moment for moment in key.done if moment >= now - _RECENT_S]
        if len(recent) < 2:
            return 0.0
        return len(recent) / max(0.1, now - recent[0])

    async def _wait_for_window(self, key: _Key, priority: float) -> None:
        await _queued(key.waiters, priority, key.order, lambda: self._release(key))

    def _release(self, key: _Key) -> None:
        key.in_flight -= 1
        self._wake(key)

    @staticmethod
    def _wake(key: _Key) -> None:
        """Hand free places of the window to the oldest waiting conversations (each counted in ``in_flight``)."""
        while key.waiters and (key.in_flight < int(key.window) or not key.in_flight):
            waiter = heapq.heappop(key.waiters)[2]
            if not waiter.done():
                key.in_flight += 1
                waiter.set_result(None)

    def _rates(self, budget: Budget) -> tuple[float, float]:
        """Requests and tokens per second: the lower of the static cap and the provider's announced limit."""
        rates = []
        for static, learned in ((self.rpm, budget.learned_requests), (self.tpm, budget.learned_tokens)):
            candidates = [r for r in (static / 60.0 if static else 0.0, learned) if r > 0]
            rates.append(min(candidates) if candidates else 0.0)
        return rates[0], rates[1]

    def _windowed(self, budget: Budget) -> tuple[bool, bool]:
        """Whether requests and tokens are counted in the provider's windows (no continuous refill). A static cap
        keeps its resource a bucket (the cap is one): then a window's ``remaining`` 0 pauses instead."""
        return bool(budget.window_requests and not self.rpm), bool(budget.window_tokens and not self.tpm)

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
        window_r, window_t = self._windowed(budget)
        if rate_r and not window_r:
            budget.level_requests = min(budget.cap_requests, budget.level_requests + elapsed * rate_r)
        if rate_t and not window_t:
            budget.level_tokens = min(budget.cap_tokens, budget.level_tokens + elapsed * rate_t)
        return rate_r, rate_t

    async def _reserve(self, key: _Key, ticket: Ticket, messages: Sequence[Mapping[str, Any]],
                       max_tokens: int, priority: float) -> None:
        """Wait until the budget holds one request and this one's tokens, then take them. Only the head of this
        process's queue (``key.pacer``, oldest conversation first) polls the budget, so a correction from a reply
        applies to the very next request, and N waiting requests cost one poll per slot, not N."""
        await key.pacer.acquire(priority)
        try:
            if key.adaptive:  # no limit announced, 429s seen: space the requests at the adapted rate
                now = time.monotonic()
                slot = max(now, key.next_slot)
                if slot > now:
                    await asyncio.sleep(slot - now)
                key.next_slot = slot + 1.0 / key.adaptive
            store = key.store
            while True:
                budget = store.load()
                now = time.monotonic()
                delay = budget.pause_until - now
                if delay <= 0:
                    rate_r, rate_t = self._refill(budget, now)
                    window_r, window_t = self._windowed(budget)
                    if (rate_t or window_t) and not ticket.estimate:
                        ticket.estimate = estimate_prompt_tokens(messages)
                        ticket.tokens = ticket.estimate * key.ratio + max(0, max_tokens)
                    need_r = 1.0 if window_r else min(1.0, budget.cap_requests)
                    need_t = ticket.tokens if window_t else min(ticket.tokens, budget.cap_tokens)
                    delay = max(_shortfall(budget.level_requests, need_r, rate_r, window_r,
                                           budget.reset_at_requests, now),
                                _shortfall(budget.level_tokens, need_t, rate_t, window_t,
                                           budget.reset_at_tokens, now))
                if delay <= 0:
                    for window, level, reset_at, need in (("r", "level_requests", "reset_at_requests", need_r),
                                                          ("t", "level_tokens", "reset_at_tokens", need_t)):
                        if (window_r if window == "r" else window_t) and getattr(budget, level) < need:
                            # The announced reset has passed: one request probes what the window holds now; its
                            # reply's headers tell the rest (or, without them, another probe after a while).
                            setattr(budget, level, need)
                            setattr(budget, reset_at, now + key.probe_after)
                    if rate_r or window_r:
                        budget.level_requests -= 1.0
                    if rate_t or window_t:
                        budget.level_tokens -= ticket.tokens
                    budget.reserved_requests += 1.0
                    budget.reserved_tokens += ticket.tokens
                    ticket.mark, ticket.tokens_mark = budget.reserved_requests, budget.reserved_tokens
                    key.unanswered[ticket.mark] = ticket.tokens
                    store.save(budget)
                    break
                store.unlock()
                clock = LIMIT_CLOCK.get()
                left = clock.left() if clock is not None else None
                if left is not None and delay > left + 1.0:
                    raise RateLimitWaitExceeded(delay)  # a reset announced past the bound: waiting cannot reach it
                await asyncio.sleep(max(delay, 0.001))
        finally:
            key.pacer.release()
        ticket.sent_at = time.monotonic()

    def _observe(self, key: _Key, ticket: Ticket, observed: Observed) -> None:
        """Take the provider's word: its limits become the rates, its remaining counts the levels, and a count
        that is no continuously refilled bucket's (a fixed or sliding window) makes that resource a window."""
        store = key.store
        budget = store.load()
        now = time.monotonic()
        if observed.limit_requests:
            budget.learned_requests = observed.limit_requests / 60.0
        if observed.limit_tokens:
            budget.learned_tokens = observed.limit_tokens / 60.0
        for name, limit, remaining, reset in (
                ("requests", observed.limit_requests, observed.remaining_requests, observed.reset_requests),
                ("tokens", observed.limit_tokens, observed.remaining_tokens, observed.reset_tokens)):
            if remaining is None:
                continue
            implied = _implied_capacity(limit, remaining, reset)
            reference = getattr(budget, f"implied_{name}")
            if implied is None and not limit:
                setattr(budget, f"window_{name}", 1.0)  # only counts (Azure): a window of unknown length
            elif implied is not None and not reference:
                setattr(budget, f"implied_{name}", implied)
            elif implied is not None and abs(implied - reference) > _capacity_tolerance(reference, limit):
                setattr(budget, f"window_{name}", 1.0)
        rate_r, rate_t = self._refill(budget, now)
        window_r, window_t = self._windowed(budget)
        if ticket.mark and ticket.mark > budget.applied_mark:
            budget.applied_mark = ticket.mark
            # What refilled between the provider's count and now is not credited: the count was made when the
            # request arrived, which may be well after ``sent_at`` on a busy machine. The bucket keeps that much
            # (about a round trip's worth) in reserve; the rate, and so the throughput, is unchanged.
            later_requests = budget.reserved_requests - ticket.mark
            later_tokens = budget.reserved_tokens - ticket.tokens_mark
            if window_r or window_t:
                # A window refills only at its reset: a request reserved before this one but still on its way
                # (the provider may not have counted it) would be one too many. Keep them in reserve until answered.
                earlier = [tokens for mark, tokens in key.unanswered.items() if mark < ticket.mark]
                later_requests += len(earlier)
                later_tokens += sum(earlier)
            if observed.remaining_requests is not None and (rate_r or window_r):
                budget.cap_requests = max(budget.cap_requests, observed.remaining_requests + 1.0)
                level = observed.remaining_requests - later_requests
                budget.level_requests = min(budget.cap_requests, level)
                if window_r:
                    budget.reset_at_requests = now + _or(observed.reset_requests, key.probe_after)
            if observed.remaining_tokens is not None and (rate_t or window_t):
                budget.cap_tokens = max(budget.cap_tokens, observed.remaining_tokens + ticket.tokens)
                level = observed.remaining_tokens - later_tokens
                budget.level_tokens = min(budget.cap_tokens, level)
                if window_t:
                    budget.reset_at_tokens = now + _or(observed.reset_tokens, key.probe_after)
            for remaining, later, reset, windowed in (
                    (observed.remaining_requests, later_requests, observed.reset_requests, budget.window_requests),
                    (observed.remaining_tokens, later_tokens, observed.reset_tokens, budget.window_tokens)):
                if windowed and remaining is not None and remaining - later < 1 and reset:
                    # A window spent (under a static cap, which keeps the budget a bucket): wait for its reset.
                    budget.pause_until = max(budget.pause_until, now + reset)
                    break
        store.save(budget)
        key.paced = True


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _shortfall(level: float, need: float, rate: float, window: bool, reset_at: float, now: float) -> float:
    """Seconds until ``need`` fits: at the rate (a bucket), or at the announced reset (a window; 0 once it has
    passed, for a probe)."""
    if level >= need:
        return 0.0
    if window:
        return max(0.0, reset_at - now)
    return (need - level) / rate if rate else 0.0


def _implied_capacity(limit: float | None, remaining: float, reset: float | None) -> float | None:
    """The capacity a reply implies if the provider's count is a bucket refilled continuously at ``limit`` per
    minute: what remains plus what refills until ``reset`` (its time until full). A bucket's is the same in every
    reply (OpenAI's: the limit itself); a fixed window's reset is the time to its end and a sliding window's
    until its oldest request leaves, whatever remains, so theirs drifts as requests are counted. None: no limit
    or no reset announced (then a limit alone is taken for a bucket, counts alone for a window)."""
    if not limit or reset is None:
        return None
    return remaining + reset * limit / 60.0


def _capacity_tolerance(reference: float, limit: float | None) -> float:
    """How far a bucket's implied capacity may stray from the first one: rounding of the counts (1) and of the
    reset (1 s of refill, for providers that round it to seconds), plus 3%."""
    return 2.0 + (limit or 0.0) / 60.0 + 0.03 * reference


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
