"""LLM access: the official ``openai`` async client behind the disk cache, with bounded retries.

Why one module: it is the one path every LLM call takes (replay, cache, transport, retries, the deadline, fail-fast
and scrubbing); the order of those steps is the contract, and it is read, and tested, as one sequence.

One ``LLMClient`` serves every conversation of a process. Retries use exponential backoff with jitter on
429, 5xx, timeouts and connection errors and honour ``Retry-After``; a 429 pauses the model through the shared
``RateLimiter`` (``rate_limits.py``: adaptive concurrency, pacing from the caps and the provider's rate-limit
headers, one budget for the processes of a run) instead of letting each conversation hammer the endpoint.

Every attempt has one deadline, ``request_timeout``, for the whole exchange including the reply body (the
transports' own timeouts are per read: an endpoint dripping a byte a second never trips them). A broken
endpoint fails the run fast instead of once per conversation: after a request has timed out with no successful
reply since, later requests are not sent at all, and a timeout on an endpoint that never answered is not
retried; after one request has used up its retries on a refused (or closed-before-reply) connection, later
requests try once. Every error text is scrubbed of the API key and the base URL's credentials.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import math
import random
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from pytest_llmsim.errors import BackendMissingError, CacheMissError, ConfigError, EndpointError, UnjudgedError
from pytest_llmsim.llm.rate_limits import LIMIT_CLOCK, LimitClock, RateLimiter, RateLimitWaitExceeded, Ticket
from pytest_llmsim.llm.scrubbing import RunSecrets, scrub_data
from pytest_llmsim.model.settings import (
    EndpointSettings,
    RecordMode,
    redact_url,
    resolve_http_backend,
    scrub_secrets,
    split_url_query,
    url_secrets,
)
from pytest_llmsim.replay.cache import CallCache, request_key
from pytest_llmsim.replay.recordings import CURRENT as RECORDER

if TYPE_CHECKING:
    from collections.abc import Callable

    # openai is imported on the first live call only: importing it costs about a second of CPU, and a run that
    # replays everything from the cache never needs it.
    import openai

    from pytest_llmsim.replay.recordings import ScenarioRecorder

# Wire formats tried, in order, for a request that wants JSON matching a schema. llama.cpp's server
# rejects ``json_schema`` with HTTP 500 but honours ``json_object`` with a ``schema``. A format is remembered as
# unsupported (per endpoint and model) only on evidence: the same request succeeded with the next weaker
# format, and the rejection's body named the format, or it happened on ``_FORMAT_CONFIRMATIONS`` requests in a
# row. A flaky 500 must not downgrade a whole run, nor a 400 about something else: a rejection whose body names
# another cause (``_OTHER_CAUSES``: the prompt is longer than the model's context, ...) is no evidence at all.
STRUCTURED_MODES = ("json_schema", "json_object", "plain")
_FORMAT_REJECTED = {400, 422, 500}
_FORMAT_WORDS = ("response_format", "json_schema", "json schema", "json_object")
_OTHER_CAUSES = ("context length", "context_length", "context window", "context size", "maximum context",
                 "too many tokens", "too long", "max_tokens", "rate limit", "rate_limit", "quota")
_FORMAT_CONFIRMATIONS = 3
_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
# A request answered 429 is retried without counting against llmsim_max_retries: at a provider's limit the limiter
# paces the retries, and a 429 is the limit speaking, not the endpoint failing. What bounds them is the scenario's
# time spent waiting on the limit (``rate_limits.LimitClock``, llmsim_rate_limit_wait).

# openai's marker for "return the raw response" (``with_raw_response``): the reply's rate-limit headers are read
_RAW_RESPONSE: openai.RequestOptions = {"headers": {"X-Stainless-Raw-Response": "true"}}


class _RawReply(Protocol):
    """What ``post`` returns with ``_RAW_RESPONSE`` (openai's LegacyAPIResponse, not the type ``cast_to`` names)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def parse(self) -> Any: ...

_TRANSCRIPT_LINE = re.compile(r"\s*(\d+)\. ([^:]+): (.*)")  # a line of ``Transcript.as_text``


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def diverged_message(label: str, turn: int, was: str, now: str, mode: str, speaker: str = "agent") -> str:
    """How a replay-only miss names the turn where the conversation left the recording (the recorded cache or the
    scenario's recording file alike), with that turn's recorded and new text: the agent under test answered
    differently, so the next request of the customer (or the judge) was never recorded."""
    recorded = f"recorded {speaker} text:"
    return (f"{label}: the conversation diverged from the recording at turn {turn}: the {speaker}'s reply changed, "
            f"so this request is new and record mode is '{mode}'.\n"
            f"  {recorded} {_shorten(was)!r}\n"
            f"  {f'new {speaker} text:'.ljust(len(recorded))} {_shorten(now)!r}\n")


def _recording_miss(recorder: ScenarioRecorder, descriptor: dict[str, Any], label: str, role: str,
                    cache_miss: Callable[[dict[str, Any], str, str], str] | None = None) -> str:
    """Why the scenario's recording file has no reply for this call. When the conversation left it at a turn
    whose text changed, that is told as the cache tells it (``diverged_message``); otherwise the recording's own
    explanation (a setting or a prompt changed, nothing alike), followed by the cache's (``cache_miss``)."""
    routing = None if recorder.changed_setting(descriptor, role) else recorder.changed_routing()
    if routing is not None:  # another agent answered a turn (a multi-agent system routed it elsewhere)
        number, was, now = routing
        return (f"{label}: the conversation diverged from the recording at turn {number}: another agent answered, "
                f"so this request is new and record mode is '{recorder.mode}'.\n"
                f"  recorded speaker(s): {_shorten(was)!r}\n"
                f"  new speaker(s):      {_shorten(now)!r}\n"
                f"The recording {recorder.path} has no reply for this request, and record mode "
                f"'{recorder.mode}' never changes an existing recording. If the change is intended, re-record "
                "it with --llmsim-record=once (needs the endpoint) and commit it.")
    turn = None if recorder.changed_setting(descriptor, role) else recorder.changed_turn(descriptor, role)
    if turn is not None:
        number, was, now, speaker = turn
        return diverged_message(label, number, was, now, str(recorder.mode), speaker) + (
            f"The recording {recorder.path} has no reply for this request, and record mode "
            f"'{recorder.mode}' never changes an existing recording. If the change is intended, re-record "
            "it with --llmsim-record=once (needs the endpoint) and commit it.")
    message = recorder.miss_message(label, descriptor, role)
    return message if cache_miss is None else message + "\n" + cache_miss(descriptor, label, role)


UNJUDGED_HINT = ("set OPENAI_API_KEY and/or llmsim_base_url (--llmsim-base-url; in CI, from a secret) so that "
                 "--llmsim-record=changed continues it live and judges it, or re-record it locally with "
                 "--llmsim-record=once and commit recordings/")


def unjudged_message(label: str, why: str, cause: str = "") -> str:
    """What record mode ``changed`` says of a changed conversation it cannot continue live: which call, where the
    conversation left its recording (``why``), and why it stops there (``cause``; default: no endpoint)."""
    cause = cause or f"it cannot be judged without an endpoint: {UNJUDGED_HINT}"
    return f"{label}: the conversation changed since its recording ({why}); {cause}."


def _change_reason(recorder: ScenarioRecorder | None, descriptor: dict[str, Any], role: str,
                   cache_reason: Callable[[], str | None]) -> str:
    """Where the conversation left its recording, in a phrase (``recordings.ScenarioRecorder.divergence``), or what
    the disk cache's closest call says (``cache_reason``)."""
    if recorder is not None and recorder.existing is None:
        return f"the scenario has no recording yet in {recorder.path}"
    if recorder is not None:
        why = recorder.divergence(descriptor, role)
        if why is not None:
            return why
    try:
        why = cache_reason()
    except Exception:  # the explanation must never hide the miss itself
        why = None
    return why or "this request was never recorded"


# Transport failures, as ``_transport_failure`` classifies them.
CONNECT, CLOSED_BEFORE_REPLY, CLOSED_MID_REPLY, TIMED_OUT, CONNECTION = (
    "connect", "closed before reply", "closed mid reply", "timed out", "connection error")


@dataclass(frozen=True)
class LLMRequest:
    role: str
    model: str
    messages: tuple[dict[str, str], ...]
    temperature: float
    max_tokens: int
    seed: int | None
    json_schema: dict[str, Any] | None = None
    attempt: int = 0
    # Ask for the tokens' log probabilities with this many alternatives per token (OpenAI's ``logprobs: true``,
    # ``top_logprobs: N``); None: not asked (and not part of the cache key, so other requests' keys are unchanged).
    top_logprobs: int | None = None


@dataclass
class LLMReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool
    model: str
    tool_calls: list[dict[str, Any]] | None = None  # as the endpoint sent them (OpenAI shape), when it did
    cached_input_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache (priced cheaper)
    name: str = ""  # the assistant message's ``name`` (OpenAI's field for who spoke), when the endpoint sent one
    # Per generated token, when the request asked for them and the endpoint sent them (``read_logprobs``):
    # ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}``; None when the endpoint sent none.
    logprobs: list[dict[str, Any]] | None = None


# Set while a call waits to retry after a failed attempt, in the task (conversation) that made it: a
# conversation whose deadline falls then ended because of the endpoint, not because of the conversation.
RETRYING: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmsim_retrying", default=None)


def read_logprobs(choice: Any) -> list[dict[str, Any]] | None:
    """The per-token log probabilities of a completion's choice as OpenAI-compatible endpoints send them
    (``choices[0].logprobs.content``: llama.cpp's server, vLLM, OpenAI), kept as ``{"token", "logprob",
    "top_logprobs": [{"token", "logprob"}]}`` (ids and bytes dropped); None when the choice has none (an endpoint
    that ignores ``logprobs``, or ``"logprobs": null``). Entries that are not of that shape are skipped."""
    data = choice.get("logprobs") if isinstance(choice, dict) else None
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        return None

    def entry(item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            return None
        value = item.get("logprob")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return None
        # JSON (cache, recordings) holds no infinity: -inf (probability 0) becomes -1e9, still 0 once exponentiated;
        # +inf becomes 1e9, a value no log probability has, which the judge refuses (``judge.score_probabilities``)
        return {"token": item["token"], "logprob": max(-1e9, min(1e9, float(value)))}

    tokens = []
    for item in content:
        token = entry(item)
        if token is None:
            continue
        top = item.get("top_logprobs")
        token["top_logprobs"] = [t for t in map(entry, top) if t is not None] if isinstance(top, list) else []
        tokens.append(token)
    return tokens


class Completer(Protocol):
    """Anything that answers an LLMRequest: the cached client, or a per-scenario meter around it."""

    async def complete(self, request: LLMRequest, *, label: str) -> LLMReply: ...


@dataclass
class CallStats:
    live_calls: int = 0
    cached_calls: int = 0
    retries: int = 0


def _aiohttp_transport(backend: str, base_url: str | None) -> Any | None:
    """openai's aiohttp transport when ``backend`` resolves to it (see ``settings.resolve_http_backend``)."""
    if resolve_http_backend(backend, base_url) != "aiohttp":
        return None
    import openai

    try:
        return openai.DefaultAioHttpClient()
    except Exception as exc:  # an openai release without it, or without its aiohttp helper package
        if backend.strip().lower() == "aiohttp":
            raise ConfigError(f"llmsim_http_backend = aiohttp is not usable here ({type(exc).__name__}: {exc}); "
                              "pip install -U 'openai[aiohttp]' or use httpx") from None
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first (bounded: chains can loop)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 16 and all(current is not e for e in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _transport_failure(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, detail)`` when ``exc`` is a failure of the HTTP exchange itself, else None.

    The chain is what tells: openai's aiohttp transport reports a refused connection and a server that
    closed before replying both as a *connect timeout* (the ConnectionRefusedError or ServerDisconnectedError
    is further down); httpx says "Server disconnected without sending a response" or "peer closed connection
    without sending complete message body" in a RemoteProtocolError; the whole-request deadline is a bare
    TimeoutError.
    """
    chain = _chain(exc)
    # The detail shown: the innermost exception that says something (a cancellation, e.g. by the deadline,
    # says nothing), on one line.
    telling = [e for e in chain if not isinstance(e, asyncio.CancelledError)] or chain
    innermost = next((e for e in reversed(telling) if str(e).strip()), telling[-1])
    text = " ".join(str(innermost).split())  # the caller scrubs, then shortens
    detail = f"{type(innermost).__name__}: {text}" if text else type(innermost).__name__
    kinds = {kind for e in chain if (kind := _failure_kind(e)) is not None}
    for kind in (CONNECT, CLOSED_BEFORE_REPLY, CLOSED_MID_REPLY, TIMED_OUT, CONNECTION):  # most telling first
        if kind in kinds:
            return kind, detail
    return None


def _failure_kind(exc: BaseException) -> str | None:
    """What one exception of a chain says about the exchange (see ``_transport_failure``)."""
    names = {cls.__name__ for cls in type(exc).__mro__}  # by name: aiohttp, httpx or httpx2 by release
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or "ClientConnectorError" in names:
        return CONNECT
    if "ServerDisconnectedError" in names or ("RemoteProtocolError" in names
                                              and "without sending a response" in str(exc)):
        return CLOSED_BEFORE_REPLY
    if names & {"ClientPayloadError", "ContentLengthError", "TransferEncodingError"} or (
            "RemoteProtocolError" in names and "message body" in str(exc)):
        return CLOSED_MID_REPLY
    if isinstance(exc, TimeoutError) or names & {"TimeoutException", "APITimeoutError"}:
        return TIMED_OUT
    if "ConnectError" in names:
        return CONNECT
    if isinstance(exc, ConnectionError) or names & {"APIConnectionError", "TransportError", "ClientConnectionError"}:
        return CONNECTION
    return None


def _token_count(usage: Any, name: str) -> int:
    try:
        return int(usage.get(name) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _response_text(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:
        return str(exc)


def _retry_after_seconds(exc: openai.APIStatusError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    for name in ("retry-after-ms", "retry-after"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        return value / 1000.0 if name.endswith("-ms") else value
    return None


class LiveSpend:
    """What this run's live calls cost, for record mode ``changed``'s cap (``EndpointSettings.max_live_cost_usd``,
    from ``llmsim_max_cost_usd``), priced as the reports price them (``llmsim_prices``, then genai-prices; an
    unpriced model counts $0). With ``shared_dir`` (the xdist workers' rate-limit folder) the sum is kept in a
    file there under ``fcntl.flock``, so the cap is the run's, not each worker's; elsewhere each process counts
    its own. Checked before each live call: calls already in flight finish, so the spend can pass the cap by what
    they cost (the suite gate on ``llmsim_max_cost_usd`` fails the run then)."""

    def __init__(self, limit: float | None, prices: Any = None, shared_dir: Any = None) -> None:
        self.limit = limit
        self.spent = 0.0  # this process's
        self._prices = prices
        self._table: Any = None
        self._path = None
        if limit is not None and shared_dir is not None:
            try:
                import fcntl  # noqa: F401  (POSIX only)
            except ImportError:  # pragma: no cover - Windows: each process counts its own
                pass
            else:
                self._path = shared_dir / "live-spend.bin"

    def add(self, model: str, reply: LLMReply) -> None:
        if self.limit is None:
            return
        if self._table is None:
            from pytest_llmsim.llm.pricing import load_price_table

            self._table = load_price_table(self._prices)
        found = self._table.match(model)
        cost = 0.0 if found is None else found.cost(1, reply.prompt_tokens, reply.completion_tokens,
                                                     reply.cached_input_tokens, self._table.at)
        if cost <= 0:
            return
        self.spent += cost
        if self._path is not None:
            self._update(cost)

    def total(self) -> float:
        return self._update(0.0) if self._path is not None else self.spent

    def _update(self, cost: float) -> float:
        """Add ``cost`` to the shared sum and return it (this process's sum when the file cannot be used)."""
        import fcntl
        import os
        import struct

        assert self._path is not None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return self.spent
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = os.pread(fd, 8, 0)
            total = (struct.unpack("<d", data)[0] if len(data) == 8 else 0.0) + cost
            if cost:
                os.pwrite(fd, struct.pack("<d", total), 0)
            return total
        finally:
            os.close(fd)  # (closing releases the lock)

    def over_budget(self) -> str | None:
        """Why no new live call may be made (the cap is reached), or None."""
        if self.limit is None:
            return None
        total = self.total()
        if total < self.limit:
            return None
        return (f"it was not continued live because the cost budget is reached: live calls have cost "
                f"${total:.6f}, llmsim_max_cost_usd is ${self.limit:g}; raise --llmsim-max-cost-usd, or re-record "
                "it locally with --llmsim-record=once and commit recordings/")


class LLMClient:
    """Cached, retrying chat completions. Create and use on one event loop."""

    def __init__(self, endpoint: EndpointSettings, cache: CallCache, limiter: RateLimiter | None = None, *,
                 own_endpoint: bool = True, secrets: RunSecrets | None = None) -> None:
        self.endpoint = endpoint
        # Every secret of the run (``scrubbing.RunSecrets``): scrubbed from each reply as it arrives and from errors.
        self.secrets = secrets if secrets is not None else RunSecrets(endpoint)
        self.secrets.add(endpoint.secrets())
        self.own_endpoint = own_endpoint  # False: an agent's endpoint, named on each call it records
        self.cache = cache
        self.limiter = limiter or RateLimiter()
        self.stats = CallStats()
        self.spend = LiveSpend(endpoint.max_live_cost_usd, endpoint.prices, getattr(self.limiter, "shared_dir", None))
        # Structured output: per (endpoint identity, model), the index in STRUCTURED_MODES to start from, and
        # how many requests in a row have shown the stronger format rejected while the weaker one worked.
        self._structured_mode: dict[tuple[str, str], int] = {}
        self._format_strikes: dict[tuple[str, str], int] = {}
        self._base_url = endpoint.base_url
        self._openai: openai.AsyncOpenAI | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_error: str | None = None
        self._connect_kind_missing = False
        # Endpoint health, for failing fast. ``_answered``: any HTTP reply (even an error status) this process.
        # ``_down_kind``: a request used up its retries on this kind of connection failure, no success since.
        # ``_hung``: a request ended in a timeout, no success since; later requests are not sent.
        self._answered = False
        self._down_kind: str | None = None
        self._hung = False

    async def _api(self, label: str) -> openai.AsyncOpenAI:
        """The HTTP client, created on the first live call (after ``endpoint.connect``, if any)."""
        if self._openai is None:
            async with self._connect_lock:
                if self._openai is None:
                    if self._connect_error is not None:
                        error = BackendMissingError if self._connect_kind_missing else EndpointError
                        raise error(f"{label}: {self._connect_error}")
                    if self.endpoint.connect is not None:
                        try:
                            self._base_url = await asyncio.to_thread(self.endpoint.connect)
                        except BackendMissingError as exc:
                            self._connect_error, self._connect_kind_missing = str(exc), True
                            raise BackendMissingError(f"{label}: {exc}") from None
                        except Exception as exc:
                            self._connect_error = self._scrub(f"cannot reach {self.endpoint.describe()}: {exc}")
                            raise EndpointError(f"{label}: {self._connect_error}") from None
                    import openai

                    options: dict[str, Any] = {}
                    http_client = _aiohttp_transport(self.endpoint.http_backend, self._base_url)
                    if http_client is not None:
                        options["http_client"] = http_client
                    base_url = self._base_url
                    if base_url:
                        # ``?api-key=...``: query parameters stay query parameters of every request.
                        base_url, query = split_url_query(base_url)
                        if query:
                            options["default_query"] = query
                    self._openai = openai.AsyncOpenAI(
                        **options,
                        base_url=base_url,
                        api_key=self.endpoint.api_key or "no-key-needed",
                        timeout=self.endpoint.request_timeout,
                        max_retries=0,
                    )
        return self._openai

    def _scrub(self, text: str) -> str:
        """``text`` without the API key or the base URL's credentials (also those of a ``connect``ed URL)."""
        text = self.secrets.scrub(self.endpoint.scrub(text))
        if self._base_url and self._base_url != self.endpoint.base_url:
            text = scrub_secrets(text, frozenset(url_secrets(self._base_url)))
        return text

    def _scrub_reply(self, reply: LLMReply) -> LLMReply:
        """``reply`` with every secret of the run scrubbed from its text and tool calls, as it enters the
        conversation: an endpoint that echoes a key (or a URL's ``?api-key=``) gives ``***``, live and in replay
        alike (the cache and the recordings keep the scrubbed reply, and the next request is keyed on it)."""
        text = self._scrub(reply.text)
        calls = scrub_data(reply.tool_calls, self._scrub) if reply.tool_calls else reply.tool_calls
        name = self._scrub(reply.name) if reply.name else reply.name
        logprobs = scrub_data(reply.logprobs, self._scrub) if reply.logprobs else reply.logprobs
        if text == reply.text and calls == reply.tool_calls and name == reply.name and logprobs == reply.logprobs:
            return reply
        return dataclasses.replace(reply, text=text, tool_calls=calls, name=name, logprobs=logprobs)

    def _error(self, message: str) -> EndpointError:
        return EndpointError(self._scrub(message))

    def descriptor(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.identity,
            "model": request.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "seed": request.seed,
            "max_tokens": request.max_tokens,
            "response_format": {"json_schema": request.json_schema} if request.json_schema else None,
            "tools": None,
            "attempt": request.attempt,
            **({"logprobs": request.top_logprobs} if request.top_logprobs is not None else {}),
        }

    async def complete(self, request: LLMRequest, *, label: str, use_cache: bool = True) -> LLMReply:
        """Reply for ``request`` from the cache or the endpoint; ``label`` names the call in errors.
        ``use_cache=False`` always calls the endpoint and records nothing (a code agent called live)."""
        if not use_cache:
            reply = self._scrub_reply(await self._call_with_retries(request, label))
            self.stats.live_calls += 1
            return reply
        descriptor = self.descriptor(request)
        recorder = RECORDER.get()
        if recorder is not None:  # the scenario's readable recording answers first
            match = recorder.call_key(descriptor)
            hit = recorder.lookup(match)
            if hit is None and recorder.exclusive:
                raise CacheMissError(self._scrub(_recording_miss(recorder, descriptor, label, request.role)))
        if recorder is None or hit is None:
            key = request_key(descriptor)
            hit = self.cache.lookup(key, label=label)
        if hit is not None:
            self.stats.cached_calls += 1
            if recorder is not None:
                recorder.add(match, descriptor, hit, label, request.role, self._recorded_endpoint())
            return LLMReply(hit["text"], hit["prompt_tokens"], hit["completion_tokens"],
                            hit["latency_s"], True, hit["model"], hit.get("tool_calls"),
                            _token_count(hit, "cached_input_tokens"), str(hit.get("name") or ""), hit.get("logprobs"))
        mode = self.cache.mode
        if not mode.may_call_network(self.endpoint.configured):
            if mode is RecordMode.CHANGED:
                why = _change_reason(recorder, descriptor, request.role,
                                     lambda: self._divergence_phrase(descriptor, label, request.role))
                raise UnjudgedError(self._scrub(unjudged_message(label, why)))
            if recorder is not None and recorder.existing is not None:
                message = _recording_miss(recorder, descriptor, label, request.role, self._miss_message)
            else:
                message = self._miss_message(descriptor, label, request.role)
            raise CacheMissError(self._scrub(message))
        spent = self.spend.over_budget() if mode is RecordMode.CHANGED else None
        if spent is not None:
            why = _change_reason(recorder, descriptor, request.role,
                                 lambda: self._divergence_phrase(descriptor, label, request.role))
            raise UnjudgedError(self._scrub(unjudged_message(label, why, spent)))
        reply = self._scrub_reply(await self._call_with_retries(request, label))
        response = {
            "text": reply.text, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "latency_s": reply.latency_s, "model": reply.model,
        }
        if reply.tool_calls:  # only then: entries of replies without tool calls stay as they were
            response["tool_calls"] = reply.tool_calls
        if reply.cached_input_tokens:  # the same: older entries read it as 0
            response["cached_input_tokens"] = reply.cached_input_tokens
        if reply.name:  # the same
            response["name"] = reply.name
        if reply.logprobs is not None:  # asked for and sent: replayed with the reply (an empty list included)
            response["logprobs"] = reply.logprobs
        self.cache.store(key, descriptor, response, label)
        if recorder is not None:
            recorder.add(match, descriptor, response, label, request.role, self._recorded_endpoint())
        self.stats.live_calls += 1
        self.spend.add(request.model, reply)
        return reply

    def _recorded_endpoint(self) -> str:
        """The endpoint named on a recorded call: only when it is not the run's main one (an openai agent's)."""
        return "" if self.own_endpoint else self.endpoint.identity

    def _closest_request(self, descriptor: dict[str, Any], label: str) -> dict[str, Any] | None:
        """The recorded request most like ``descriptor``: same scenario first, then fewest differing fields, the
        same number of messages, fewest differing messages. (``CallCache.closest`` ranks by fields only, so the
        customer's requests of one scenario all tie; the divergence needs the one of the same turn.)"""
        wanted_messages = descriptor.get("messages") or []
        best: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None
        for entry in self.cache.entries():
            recorded = entry["request"]
            fields = sum(1 for name, wanted in descriptor.items()
                         if name != "messages" and recorded.get(name) != wanted)
            messages = recorded.get("messages") or []
            same_length = len(messages) == len(wanted_messages)
            differing = sum(1 for a, b in zip(messages, wanted_messages, strict=False) if a != b) if same_length \
                else len(wanted_messages)
            rank = (0 if entry["label"].split(" ")[0] == label else 1, fields, 0 if same_length else 1, differing)
            if best is None or rank < best[0]:
                best = (rank, recorded)
        return None if best is None else best[1]

    def _divergence(self, descriptor: dict[str, Any], label: str, role: str) -> str | None:
        """"The conversation diverged from the recording at turn N", with the recorded and the new agent text,
        when the closest recorded request of this scenario differs only in what the agent said: the agent under
        test changed its reply, so the customer's (or the judge's) next request is new."""
        found = self._diverged_turn(descriptor, label, role)
        if found is None:
            return None
        turn, was, now = found
        return diverged_message(label, turn, was, now, "none") + (
            "If the change is intended, re-record with --llmsim-record=once (needs the endpoint), then commit the "
            "recordings/ it writes (.llmsim_cache/ is local: keep it out of git).")

    def _divergence_phrase(self, descriptor: dict[str, Any], label: str, role: str) -> str | None:
        """``_divergence`` in a phrase, for record mode ``changed``'s ``unjudged`` message."""
        if role not in ("client", "evaluator"):
            return None
        found = self._diverged_turn(descriptor, label, role)
        if found is None:
            return None
        turn, was, now = found
        return f"diverged at turn {turn}: was {_shorten(was, 120)!r}, now {_shorten(now, 120)!r}"

    def _diverged_turn(self, descriptor: dict[str, Any], label: str, role: str) -> tuple[int, str, str] | None:
        """(turn, recorded agent text, new agent text) of ``_divergence``, from the disk cache's closest request."""
        from pytest_llmsim.model.prompts import OPENING_CUE

        recorded = self._closest_request(descriptor, label.split(" ")[0])
        if recorded is None or any(recorded.get(name) != value for name, value in descriptor.items()
                                   if name != "messages"):
            return None
        old, new = recorded.get("messages") or [], descriptor.get("messages") or []
        if len(old) != len(new):
            return None
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if not changed:
            return None
        if role == "client":  # the customer's side: the agent's turns are its "user" messages
            if any(new[i].get("role") != "user" or old[i].get("role") != "user" for i in changed):
                return None
            first = changed[0]
            cue = 1 if len(new) > 1 and new[1].get("content") == OPENING_CUE else 0
            turn = first - cue  # messages[0] is the system prompt
            was, now = str(old[first].get("content")), str(new[first].get("content"))
        else:  # the judge: the transcript is text inside its prompt; find the first changed transcript line
            first = changed[0]
            old_lines = str(old[first].get("content")).splitlines()
            new_lines = str(new[first].get("content")).splitlines()
            pair = next(((a, b) for a, b in zip(old_lines, new_lines, strict=False) if a != b), None)
            if pair is None:
                return None
            old_match, new_match = _TRANSCRIPT_LINE.match(pair[0]), _TRANSCRIPT_LINE.match(pair[1])
            if old_match is None or new_match is None or old_match.group(1, 2) != new_match.group(1, 2):
                return None
            turn, was, now = int(new_match.group(1)), old_match.group(3), new_match.group(3)
        return turn, was, now

    def _miss_message(self, descriptor: dict[str, Any], label: str, role: str = "") -> str:
        if role in ("client", "evaluator"):
            try:
                diverged = self._divergence(descriptor, label, role)
            except Exception:  # the explanation must never hide the miss itself
                diverged = None
            if diverged is not None:
                return diverged
        lines = [f"{label}: no recorded reply in {self.cache.directory} and record mode is 'none'."]
        closest = self.cache.closest(descriptor, label.split(" ")[0])
        if closest is None:
            foreign = getattr(self.cache, "foreign_seen", 0)
            lines.append(f"The cache holds {foreign} entries of an older llmsim version or a foreign format; they "
                         "are never loaded." if foreign else "The cache is empty.")
        else:
            where, diffs = closest
            lines.append(f"Closest recorded call ({where}) differs in: {'; '.join(diffs) or 'nothing?'}")
        lines.append("Record it with --llmsim-record=once (needs the endpoint), then commit the recordings/ it writes "
                     "(.llmsim_cache/ is local: keep it out of git).")
        return "\n".join(lines)

    def _wire_kwargs(self, request: LLMRequest, mode: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed + request.attempt
        if request.top_logprobs is not None:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = request.top_logprobs
        if request.json_schema is not None and mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": request.json_schema, "strict": True},
            }
        elif request.json_schema is not None and mode == "json_object":
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return kwargs

    def _mode_index(self, request: LLMRequest) -> int:
        if request.json_schema is None:
            return len(STRUCTURED_MODES) - 1
        return self._structured_mode.get((self.endpoint.identity, request.model), 0)

    def _format_evidence(self, request: LLMRequest, rejected: int, exc: openai.APIStatusError) -> None:
        """The same request failed with ``STRUCTURED_MODES[rejected]`` and succeeded with the next weaker format:
        remember the weaker one when that is evidence of an unsupported format, not of a flaky server."""
        key = (self.endpoint.identity, request.model)
        body = _response_text(exc).lower()
        if any(cause in body for cause in _OTHER_CAUSES):
            # The endpoint said what was wrong, and it was not the format (a prompt too long for the model's
            # context fails with every format; the weaker one may just have been luckier): no evidence, and it
            # breaks a run of unexplained rejections.
            self._format_strikes.pop(key, None)
            return
        strikes = self._format_strikes.get(key, 0) + 1
        if any(word in body for word in _FORMAT_WORDS) or strikes >= _FORMAT_CONFIRMATIONS:
            # Compare first: concurrent requests may have moved it already.
            if self._structured_mode.get(key, 0) == rejected:
                self._structured_mode[key] = rejected + 1
            self._format_strikes.pop(key, None)
        else:
            self._format_strikes[key] = strikes

    async def _call_with_retries(self, request: LLMRequest, label: str) -> LLMReply:
        clock = LIMIT_CLOCK.get()
        if clock is not None:
            return await self._attempts(request, label, clock)
        # Called outside a scenario's run: this request's own wait on the limit is bounded.
        clock = LimitClock(self.endpoint.rate_limit_wait)
        token = LIMIT_CLOCK.set(clock)
        try:
            return await self._attempts(request, label, clock)
        finally:
            LIMIT_CLOCK.reset(token)

    async def _attempts(self, request: LLMRequest, label: str, clock: LimitClock) -> LLMReply:
        import openai

        RETRYING.set(None)
        last_failure = ""
        attempt = 0
        api = await self._api(label)
        timeout = self.endpoint.request_timeout
        # While trying the next weaker structured format after a rejection: the rejected format's index and
        # the rejection. One such probe per request.
        probe: tuple[int, openai.APIStatusError] | None = None
        probed = False
        format_note = ""
        while True:
            mode_index = self._mode_index(request)
            if probe is not None:
                mode_index = max(mode_index, probe[0] + 1)
            try:
                ticket = await self.limiter.acquire(request.model, request.messages, request.max_tokens)
            except RateLimitWaitExceeded as exc:
                raise self._error(clock.message(label, self._where(), request.model, exc.announced)) from None
            if self._hung:
                self.limiter.finish(ticket, 0)
                raise self._error(f"{label}: not sent: {self._where()} did not answer within {timeout:g}s on an "
                                  "earlier request in this run; check the server")
            started = time.perf_counter()
            try:
                # One deadline for the whole exchange, reply body included: the transports' own timeouts are
                # per read, and an endpoint that drips a byte a second never trips them.
                async with asyncio.timeout(timeout):
                    response = await self._post(api, self._wire_kwargs(request, STRUCTURED_MODES[mode_index]),
                                                ticket)
            except openai.APIStatusError as exc:
                self._answered = True
                status = exc.status_code
                if probe is not None:
                    rejected, original = probe
                    probe = None
                    if status == original.status_code:
                        # The weaker format failed the same way: the status was not about the format. Go on
                        # as for the original error, with the original format.
                        exc = original
                        format_note = (f" ({STRUCTURED_MODES[rejected]} output; {STRUCTURED_MODES[rejected + 1]} "
                                       "failed the same way, so it is not about the output format)")
                elif (status in _FORMAT_REJECTED and not probed
                      and request.json_schema is not None and mode_index < len(STRUCTURED_MODES) - 1):
                    probe, probed = (mode_index, exc), True
                    continue
                if status == 429:
                    # The limit speaking: the limiter holds the model for the pause (the retry waits for it in
                    # the scenario's order, off the conversation's deadline); no attempt is used up.
                    clock.rate_limited += 1
                    self.stats.retries += 1
                    retry_after = _retry_after_seconds(exc)
                    left = clock.left()
                    if retry_after is not None and left is not None and retry_after > left + 1.0:
                        # the provider asks for longer than this scenario may still wait: no use sitting it out
                        raise self._error(clock.message(label, self._where(), request.model, retry_after)) from None
                    self.limiter.back_off(self._backoff(0, retry_after), request.model)
                    if clock.exhausted():
                        raise self._error(clock.message(label, self._where(), request.model)) from None
                    continue
                if status not in _RETRYABLE or attempt >= self.endpoint.max_retries:
                    raise self._error(self._status_message(label, exc, attempt, format_note)) from None
                delay = self._backoff(attempt, _retry_after_seconds(exc))
                last_failure = f"HTTP {status}"
            except Exception as exc:
                failure = _transport_failure(exc)
                if failure is None:
                    if isinstance(exc, (openai.APIError, ValueError)):  # a 200 whose body is not a completion
                        raise self._error(f"{label}: malformed completion from {self._where()}: "
                                          f"{type(exc).__name__}: {self._scrub(str(exc))[:200]}") from None
                    raise
                probe = None
                error = self._transport_error(label, failure, attempt)
                if error is not None:
                    raise error from None
                delay = self._backoff(attempt, None)
                last_failure = f"a failed exchange ({failure[0]})"
            else:
                RETRYING.set(None)
                self._answered, self._down_kind, self._hung = True, None, False
                if probe is not None:
                    self._format_evidence(request, *probe)
                elif request.json_schema is not None:
                    self._format_strikes.pop((self.endpoint.identity, request.model), None)
                return self._to_reply(response, time.perf_counter() - started, request, label)
            attempt += 1
            self.stats.retries += 1
            RETRYING.set(f"{label} was being retried after {last_failure} ({attempt} failed attempt(s))")
            await asyncio.sleep(delay)

    async def _post(self, api: openai.AsyncOpenAI, body: dict[str, Any], ticket: Ticket) -> Any:
        """One exchange, its outcome and rate-limit headers told to the limiter whatever happens. ``post`` with a
        plain JSON body and the reply as plain JSON: ``chat.completions.create`` would walk every message through
        its TypedDict transform and build a ChatCompletion model, which together cost more CPU than the HTTP
        exchange itself."""
        status, headers, parsed = 0, None, None
        try:
            raw = cast(_RawReply, await api.post("/chat/completions", body=body, cast_to=object, options=_RAW_RESPONSE))
            status, headers = 200, raw.headers
            parsed = raw.parse()
            return parsed
        except Exception as exc:
            if status == 0:  # an HTTP error status carries its reply (and its rate-limit headers)
                status = getattr(exc, "status_code", 0) or 0
                headers = getattr(getattr(exc, "response", None), "headers", None)
            raise
        finally:
            self.limiter.finish(ticket, status, headers, parsed)

    def _transport_error(self, label: str, failure: tuple[str, str], attempt: int) -> EndpointError | None:
        """The error to raise for a failed exchange, or None to retry it."""
        kind, detail = failure
        timeout = self.endpoint.request_timeout
        note = ""
        if kind == TIMED_OUT:
            if not self._answered:
                note = " (not retried: the endpoint has not answered any request in this run)"
            elif attempt < self.endpoint.max_retries:
                return None
            self._hung = True
        elif kind in (CONNECT, CLOSED_BEFORE_REPLY) and self._down_kind == kind:
            # An earlier request used up its retries on the same failure: try once, so a suite against a dead
            # endpoint fails in seconds instead of backing off per conversation.
            note = (" (not retried: the endpoint was already unreachable)" if kind == CONNECT else
                    " (not retried: the endpoint already closed connections without replying)")
        elif attempt < self.endpoint.max_retries:
            return None
        elif kind in (CONNECT, CLOSED_BEFORE_REPLY):
            self._down_kind = kind
        where = self._where()
        what = {
            CONNECT: f"cannot connect to {where}",
            CLOSED_BEFORE_REPLY: f"{where} closed the connection before replying",
            CLOSED_MID_REPLY: f"{where} closed the connection in the middle of its reply",
            TIMED_OUT: f"timed out: {where} did not send a complete reply within {timeout:g}s",
            CONNECTION: f"connection to {where} failed",
        }[kind]
        if kind == TIMED_OUT:  # the detail would only say "timeout" again
            hint = "check the server, or raise llmsim_request_timeout (it covers the whole request)"
            detail = ""
        else:
            if self.endpoint.connect is not None:  # the local model: the user configured no URL
                hint = f"the {self.endpoint.describe()} server stopped or failed; see its server.log in the " \
                       "pytest-llmsim-<pid> folder of the temp directory"
            elif kind == CONNECT:
                hint = "check --llmsim-base-url / OPENAI_BASE_URL and that the server is running"
            else:
                hint = "check the server"
            detail = f" ({self._scrub(detail)[:200]})"
        return self._error(f"{label}: {what} after {attempt + 1} attempt(s){note}{detail}; {hint}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.endpoint.backoff_max * 3)
        ceiling = min(self.endpoint.backoff_max, self.endpoint.backoff_base * (2 ** attempt))
        return random.uniform(ceiling / 2, ceiling)

    def _where(self) -> str:
        return redact_url(self._base_url) if self._base_url else self.endpoint.describe()

    def _status_message(self, label: str, exc: openai.APIStatusError, attempt: int, note: str = "") -> str:
        body = self._scrub(_response_text(exc))[:300]  # scrub first: a cut could leave part of a secret
        hint = {
            401: "check OPENAI_API_KEY",
            403: "check the key's permissions",
            404: "check the model name and --llmsim-base-url",
            429: "rate limited; lower --llmsim-concurrency or set --llmsim-rpm",
        }.get(exc.status_code, "see the server's reply above")
        return (f"{label}: HTTP {exc.status_code} from {self._where()} after {attempt + 1} attempt(s){note}: "
                f"{body}; {hint}")

    def _to_reply(self, response: Any, latency: float, request: LLMRequest, label: str) -> LLMReply:
        """Read the reply from the completion's JSON (a dict: building openai's ChatCompletion model for it
        cost more CPU than the rest of the plugin's work on a call)."""
        try:
            message = response["choices"][0]["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
            tool_calls = message.get("tool_calls") or None
            if tool_calls is not None and not isinstance(tool_calls, list):
                raise TypeError(f"tool_calls is {type(tool_calls).__name__}")
            name = message.get("name") or ""
            if not isinstance(name, str):
                raise TypeError(f"name is {type(name).__name__}")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._error(f"{label}: malformed completion from {self._where()}: no choices[0].message "
                              f"with text content ({type(exc).__name__}: {self._scrub(str(exc))[:100]}); "
                              f"body starts {self._scrub(str(response))[:200]!r}") from None
        usage = response.get("usage") or {}
        return LLMReply(
            text=text,
            prompt_tokens=_token_count(usage, "prompt_tokens"),
            completion_tokens=_token_count(usage, "completion_tokens"),
            latency_s=round(latency, 4),
            cached=False,
            model=str(response.get("model") or request.model),
            tool_calls=tool_calls,
            cached_input_tokens=_token_count(usage.get("prompt_tokens_details") if isinstance(usage, dict) else None,
                                             "cached_tokens"),
            name=name,
            logprobs=read_logprobs(response["choices"][0]) if request.top_logprobs is not None else None,
        )

    async def aclose(self) -> None:
        self.limiter.close()
        if self._openai is not None:
            await self._openai.close()
