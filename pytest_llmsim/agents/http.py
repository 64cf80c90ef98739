"""The http agent: a POST per turn to the user's service, with bounded retries, same-origin redirects only
(configured headers never cross origins) and every header value scrubbed from messages."""


from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from pytest_llmsim.agents.base import (
    AgentContext,
    AgentDriver,
    AgentReply,
    AgentSession,
    end_flag,
    is_multi_agent,
    normalize_tool_calls,
    read_multi_agent,
    scrub_reply,
)
from pytest_llmsim.agents.specs import shorten
from pytest_llmsim.errors import AgentError
from pytest_llmsim.llm.scrubbing import RunSecrets, header_secrets, scrub_data
from pytest_llmsim.model.settings import redact_url, url_secrets

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec, HttpAgentSpec
    from pytest_llmsim.model.settings import RunSettings

_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")




# -- http ------------------------------------------------------------------------------------------------------------
def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port spelled out when it is the scheme's default."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _lookup(data: Any, path: str) -> Any:
    """``data`` at the dotted ``path`` (list indices are numbers); KeyError naming the step that failed."""
    current = data
    for step in path.split("."):
        if isinstance(current, list) and step.lstrip("-").isdigit() and -len(current) <= int(step) < len(current):
            current = current[int(step)]
        elif isinstance(current, Mapping) and step in current:
            current = current[step]
        else:
            raise KeyError(step)
    return current


def fill_template(template: Any, values: Mapping[str, Any]) -> Any:
    """The body template with its placeholders filled, walked as data: a string that is exactly one
    ``{{ name }}`` becomes the value itself (a list stays a list), placeholders inside text become text."""
    if isinstance(template, str):
        whole = _PLACEHOLDER_RE.fullmatch(template.strip())
        if whole is not None and whole.group(1) in values:
            return values[whole.group(1)]

        def text(match: re.Match[str]) -> str:
            value = values.get(match.group(1), match.group(0))
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        return _PLACEHOLDER_RE.sub(text, template) if "{{" in template else template
    if isinstance(template, Mapping):
        return {key: fill_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_template(value, values) for value in template]
    return template


DEFAULT_HTTP_BODY = {"message": "{{ message }}", "session_id": "{{ session_id }}"}


class _HttpSession(AgentSession):
    __slots__ = ("context", "driver", "turn")

    def __init__(self, driver: HttpDriver, context: AgentContext) -> None:
        self.driver, self.context, self.turn = driver, context, 0

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        self.turn += 1
        last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        values = {"message": last_user, "messages": messages, "session_id": self.context.session_id,
                  "scenario": self.context.scenario, "variables": dict(self.context.variables), "turn": self.turn,
                  "seed": self.context.seed}
        return await self.driver.post(fill_template(self.driver.body, values), label=label)


class HttpDriver(AgentDriver):
    """``agent: {http: {url, body, reply, headers}}``: one POST per agent turn, with bounded retries on 408/409/
    429/5xx, timeouts and connection errors, one deadline per attempt, and every header value scrubbed."""

    kind = "http"

    def __init__(self, spec: AgentSpec, settings: RunSettings, secrets: RunSecrets) -> None:
        super().__init__(spec)
        assert spec.http is not None
        self.http: HttpAgentSpec = spec.http
        self.body = self.http.body if self.http.body is not None else DEFAULT_HTTP_BODY
        self.endpoint = settings.endpoint
        self.timeout = self.http.timeout or settings.endpoint.request_timeout
        self._secrets = secrets  # the run's: header values as read, URL credentials, every other endpoint's
        secrets.add(url_secrets(self.http.url))
        self._client: Any = None
        # As for LLM calls: a service that has never answered and then times out is taken as hung, and later
        # requests fail at once instead of each waiting out the deadline again; any answer clears it.
        self._answered = False
        self._hung = False

    def _headers(self, label: str) -> dict[str, str]:
        """Header values with ``${VAR}`` read from the environment now (a rotated token is picked up)."""
        headers = {"Content-Type": "application/json"}
        for name, raw in self.http.headers.items():
            def env(match: re.Match[str], header: str = name) -> str:
                value = os.environ.get(match.group(1))
                if value is None:
                    raise AgentError(f"{label}: environment variable {match.group(1)} (named in the http agent's "
                                     f"header {header!r}) is not set")
                return value

            value = _ENV_RE.sub(env, raw)
            self._secrets.add(header_secrets(value))  # the value and the token of "Bearer <token>"
            headers[name] = value
        return headers

    def _url(self, label: str) -> str:
        """The URL with ``${VAR}`` read from the environment now (a service started on a free port by a fixture
        can say where it listens); messages and cache keys keep the URL as written."""
        def env(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                raise AgentError(f"{label}: environment variable {match.group(1)} (named in the http agent's url) "
                                 "is not set")
            return value

        url = _ENV_RE.sub(env, self.http.url)
        if url != self.http.url:
            self._secrets.add(url_secrets(url))
        return url

    def scrub(self, text: str) -> str:
        return self._secrets.scrub(text)

    async def post(self, body: Any, *, label: str) -> AgentReply:
        if self._client is None:
            import aiohttp

            self._client = aiohttp.ClientSession()
        headers = self._headers(label)
        url = self._url(label)
        where = redact_url(self.http.url)
        attempt = 0
        redirects = 0
        while True:
            if self._hung:
                raise AgentError(self.scrub(f"{label}: not sent: the http agent {where} did not answer within "
                                            f"{self.timeout:g}s on an earlier request in this run; check the agent "
                                            "service (and its log)"))
            started = time.perf_counter()
            failure = ""
            give_up = attempt >= self.endpoint.max_retries
            try:
                # One deadline for the whole exchange, reply body included.
                async with asyncio.timeout(self.timeout):
                    # Redirects are followed here, not by aiohttp: never to another origin (see ``_redirect``).
                    async with self._client.post(url, json=body, headers=headers, allow_redirects=False) as response:
                        status = response.status
                        location = response.headers.get("Location") if status in _REDIRECTS else None
                        content = await response.read()
            except (TimeoutError, OSError) as exc:
                failure = "timed out" if isinstance(exc, TimeoutError) else f"connection failed ({exc})"
            except Exception as exc:  # aiohttp's ClientError family, told by name (no import on this path)
                if "ClientError" not in {cls.__name__ for cls in type(exc).__mro__}:
                    raise
                failure = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                self._answered, self._hung = True, False
                if location:
                    redirects += 1
                    url = self._redirect(url, location, redirects, label)
                    continue
                if 200 <= status < 300:
                    return self._read(content, status, label, where, time.perf_counter() - started)
                failure = f"HTTP {status}"
                if status not in _RETRYABLE:
                    give_up = True  # not retried
                failure += f": {shorten(content.decode('utf-8', 'replace').strip(), 300)}"
            if failure.startswith("timed out"):
                failure = f"timed out: no complete reply within {self.timeout:g}s"
                give_up = give_up or not self._answered  # never answered: hung, not slow; not retried
                self._hung = give_up
            if give_up:
                raise AgentError(self.scrub(f"{label}: the http agent {where} failed after {attempt + 1} attempt(s): "
                                            f"{failure}; check the agent service (and its log)"))
            ceiling = min(self.endpoint.backoff_max, self.endpoint.backoff_base * (2 ** attempt))
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _redirect(self, url: str, location: str, hops: int, label: str) -> str:
        """Where a redirect from ``url`` to ``location`` leads, if llmsim follows it: only within the same origin
        (scheme, host and port), re-sending the same POST, at most ``_MAX_REDIRECTS`` times. A redirect to another
        origin is an AgentError and nothing is sent there: the configured headers (a key, a token) are for this
        agent only, and a body re-sent elsewhere would carry them too."""
        target = urljoin(url, location)
        if _origin(target) != _origin(url):
            raise AgentError(self.scrub(
                f"{label}: the agent at {redact_url(url)} redirected to another origin {redact_url(target)}; llmsim "
                "does not forward configured headers across origins (nor follows such a redirect at all): set the "
                "http agent's url to the address that answers"))
        if hops > _MAX_REDIRECTS:
            raise AgentError(self.scrub(f"{label}: the agent at {redact_url(self.http.url)} redirected more than "
                                        f"{_MAX_REDIRECTS} times (last to {redact_url(target)}); set the http "
                                        "agent's url to the address that answers"))
        return target

    def _read(self, content: bytes, status: int, label: str, where: str, latency: float) -> AgentReply:
        def bad(problem: str) -> AgentError:
            return AgentError(self.scrub(f"{label}: the http agent {where} answered HTTP {status} but {problem}; body "
                                         f"starts {shorten(content.decode('utf-8', 'replace'), 300)!r}"))

        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # (nested past the parser's limit)
            raise bad("the body is not JSON") from None
        try:
            text = _lookup(data, self.http.reply)
        except KeyError as exc:
            if not is_multi_agent(data):
                raise bad(f"has no {exc.args[0]!r} on the reply path {self.http.reply!r}") from None
            text = data  # the body is a multi-agent reply
        if is_multi_agent(text):
            try:
                reply = read_multi_agent(text)
            except TypeError as exc:
                raise bad(f"its multi-agent reply is unusable: {exc}") from None
            reply.latency_s = round(latency, 4)
            return scrub_reply(reply, self.scrub)
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise bad(f"the reply path {self.http.reply!r} holds a {type(text).__name__}, not text")
        calls: list[dict[str, Any]] = []
        end = False
        try:
            if self.http.tool_calls is not None:
                try:
                    calls = normalize_tool_calls(_lookup(data, self.http.tool_calls))
                except KeyError:
                    calls = []
        except TypeError as exc:
            raise bad(f"its tool calls are unusable ({exc})") from None
        if self.http.end is not None:
            try:
                end = end_flag(_lookup(data, self.http.end), f"the end path {self.http.end!r}")
            except KeyError:
                end = False
            except TypeError as exc:
                raise bad(str(exc)) from None
        # A naive agent may echo its headers: their values must not reach the customer, the judge, the cache or
        # a report, so they are scrubbed as the reply enters the conversation.
        text = self.scrub(text)
        if calls:
            calls = scrub_data(calls, self.scrub)
        return AgentReply(text, calls, end, latency_s=round(latency, 4))

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        return _HttpSession(self, context)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


