"""LLM access: the official ``openai`` async client behind the disk cache, with bounded retries.

One ``LLMClient`` serves every conversation of a process. Retries use exponential backoff with jitter on
429, 5xx, timeouts and connection errors and honour ``Retry-After``; a 429 pauses the whole process through
the shared ``RateLimiter`` instead of letting each conversation hammer the endpoint on its own.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .cache import CallCache, request_key
from .errors import BackendMissingError, CacheMissError, ConfigError, EndpointError
from .settings import EndpointSettings, redact_url, resolve_http_backend

if TYPE_CHECKING:
    # openai is imported on the first live call only: importing it costs about a second of CPU, and a run that
    # replays everything from the cache never needs it.
    import openai

# Wire formats tried, in order, for a request that wants JSON matching a schema. llama.cpp's server
# rejects ``json_schema`` with HTTP 500 but honours ``json_object`` with a ``schema``.
STRUCTURED_MODES = ("json_schema", "json_object", "plain")
_FORMAT_REJECTED = {400, 422, 500}
_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


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


@dataclass
class LLMReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool
    model: str


class Completer(Protocol):
    """Anything that answers an LLMRequest: the cached client, or a per-scenario meter around it."""

    async def complete(self, request: LLMRequest, *, label: str) -> LLMReply: ...


@dataclass
class RateLimiter:
    """Process-wide pacing: a pause every request waits out after a 429, and an optional RPM cap."""

    rpm: float | None = None
    pause_until: float = 0.0
    _next_slot: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def back_off(self, seconds: float) -> None:
        self.pause_until = max(self.pause_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        while (delay := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self.rpm:
            async with self._lock:
                now = time.monotonic()
                slot = max(now, self._next_slot)
                self._next_slot = slot + 60.0 / self.rpm
            if slot > now:
                await asyncio.sleep(slot - now)


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


def _really_timed_out(exc: BaseException, timeout_type: type[BaseException]) -> bool:
    """A timeout, not a refused connection dressed as one (openai's aiohttp transport reports a refused
    connection as a connect timeout; the ConnectionRefusedError is further down the exception chain)."""
    if not isinstance(exc, timeout_type):
        return False
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def _token_count(usage: Any, name: str) -> int:
    try:
        return int(usage.get(name) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


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


class LLMClient:
    """Cached, retrying chat completions. Create and use on one event loop."""

    def __init__(self, endpoint: EndpointSettings, cache: CallCache, limiter: RateLimiter | None = None) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.limiter = limiter or RateLimiter()
        self.stats = CallStats()
        self._structured_mode_index = 0
        self._base_url = endpoint.base_url
        self._openai: openai.AsyncOpenAI | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_error: str | None = None
        self._connect_kind_missing = False
        self._endpoint_down = False

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
                            self._connect_error = f"cannot reach {self.endpoint.describe()}: {exc}"
                            raise EndpointError(f"{label}: {self._connect_error}") from None
                    import openai

                    transport: dict[str, Any] = {}
                    http_client = _aiohttp_transport(self.endpoint.http_backend, self._base_url)
                    if http_client is not None:
                        transport["http_client"] = http_client
                    self._openai = openai.AsyncOpenAI(
                        **transport,
                        base_url=self._base_url,
                        api_key=self.endpoint.api_key or "no-key-needed",
                        timeout=self.endpoint.request_timeout,
                        max_retries=0,
                    )
        return self._openai

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
        }

    async def complete(self, request: LLMRequest, *, label: str) -> LLMReply:
        """Reply for ``request`` from the cache or the endpoint; ``label`` names the call in errors."""
        descriptor = self.descriptor(request)
        key = request_key(descriptor)
        hit = self.cache.lookup(key)
        if hit is not None:
            self.stats.cached_calls += 1
            return LLMReply(hit["text"], hit["prompt_tokens"], hit["completion_tokens"],
                            hit["latency_s"], True, hit["model"])
        if not self.cache.may_call_network:
            raise CacheMissError(self._miss_message(descriptor, label))
        reply = await self._call_with_retries(request, label)
        self.cache.store(key, descriptor, {
            "text": reply.text, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "latency_s": reply.latency_s, "model": reply.model,
        }, label)
        self.stats.live_calls += 1
        return reply

    def _miss_message(self, descriptor: dict[str, Any], label: str) -> str:
        lines = [f"{label}: no recorded reply in {self.cache.directory} and record mode is 'none'."]
        closest = self.cache.closest(descriptor, label.split(" ")[0])
        if closest is None:
            lines.append("The cache is empty.")
        else:
            where, diffs = closest
            lines.append(f"Closest recorded call ({where}) differs in: {'; '.join(diffs) or 'nothing?'}")
        lines.append("Record it with --llmsim-record=once (needs the endpoint), then commit the cache.")
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
        if request.json_schema is not None and mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": request.json_schema, "strict": True},
            }
        elif request.json_schema is not None and mode == "json_object":
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return kwargs

    async def _call_with_retries(self, request: LLMRequest, label: str) -> LLMReply:
        import openai

        attempt = 0
        api = await self._api(label)
        while True:
            mode_index = self._structured_mode_index
            mode = STRUCTURED_MODES[mode_index]
            await self.limiter.acquire()
            started = time.perf_counter()
            try:
                # ``post`` with a plain JSON body and the reply as plain JSON: ``chat.completions.create`` would
                # walk every message through its TypedDict transform and build a ChatCompletion model, which
                # together cost more CPU than the HTTP exchange itself.
                response = await api.post("/chat/completions", body=self._wire_kwargs(request, mode),
                                          cast_to=object)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if (request.json_schema is not None and status in _FORMAT_REJECTED
                        and mode_index < len(STRUCTURED_MODES) - 1):
                    # The server refused this structured-output form: use the next one from now on
                    # (compare first: concurrent requests may have advanced it already).
                    if self._structured_mode_index == mode_index:
                        self._structured_mode_index += 1
                    continue
                if status not in _RETRYABLE or attempt >= self.endpoint.max_retries:
                    raise EndpointError(self._status_message(label, exc, attempt)) from None
                delay = self._backoff(attempt, _retry_after_seconds(exc))
                if status == 429:
                    self.limiter.back_off(delay)
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                refused = not _really_timed_out(exc, openai.APITimeoutError)
                # Once a call has used up its retries on a refused connection, later calls try once: a
                # suite against a dead endpoint fails in seconds instead of backing off per conversation.
                known_down = refused and self._endpoint_down
                if attempt >= self.endpoint.max_retries or known_down:
                    self._endpoint_down = self._endpoint_down or refused
                    what = "cannot connect" if refused else "timed out"
                    note = " (not retried: the endpoint was already unreachable)" if known_down else ""
                    raise EndpointError(
                        f"{label}: {what} to {self._where()} after {attempt + 1} attempt(s){note} "
                        f"({type(exc).__name__}: {exc}); check --llmsim-base-url / OPENAI_BASE_URL "
                        "and that the server is running"
                    ) from None
                delay = self._backoff(attempt, None)
            except (openai.APIError, ValueError) as exc:  # a 200 whose body is not a chat completion
                raise EndpointError(
                    f"{label}: malformed completion from {self._where()}: {type(exc).__name__}: {str(exc)[:200]}"
                ) from None
            else:
                self._endpoint_down = False
                return self._to_reply(response, time.perf_counter() - started, request, label)
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.endpoint.backoff_max * 3)
        ceiling = min(self.endpoint.backoff_max, self.endpoint.backoff_base * (2 ** attempt))
        return random.uniform(ceiling / 2, ceiling)

    def _where(self) -> str:
        return redact_url(self._base_url) if self._base_url else self.endpoint.describe()

    def _status_message(self, label: str, exc: openai.APIStatusError, attempt: int) -> str:
        body = ""
        try:
            body = exc.response.text[:300]
        except Exception:
            body = str(exc)[:300]
        hint = {
            401: "check OPENAI_API_KEY",
            403: "check the key's permissions",
            404: "check the model name and --llmsim-base-url",
            429: "rate limited; lower --llmsim-concurrency or set --llmsim-rpm",
        }.get(exc.status_code, "see the server's reply above")
        return (f"{label}: HTTP {exc.status_code} from {self._where()} after {attempt + 1} attempt(s): "
                f"{body}; {hint}")

    def _to_reply(self, response: Any, latency: float, request: LLMRequest, label: str) -> LLMReply:
        """Read the reply from the completion's JSON (a dict: building openai's ChatCompletion model for it
        cost more CPU than the rest of the plugin's work on a call)."""
        try:
            message = response["choices"][0]["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EndpointError(f"{label}: malformed completion from {self._where()}: no choices[0].message "
                                f"with text content ({type(exc).__name__}: {str(exc)[:100]}); "
                                f"body starts {str(response)[:200]!r}") from None
        usage = response.get("usage") or {}
        return LLMReply(
            text=text,
            prompt_tokens=_token_count(usage, "prompt_tokens"),
            completion_tokens=_token_count(usage, "completion_tokens"),
            latency_s=round(latency, 4),
            cached=False,
            model=str(response.get("model") or request.model),
        )

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()
