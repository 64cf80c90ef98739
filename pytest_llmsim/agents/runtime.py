"""The agent under test when it is code: a Python callable, an HTTP service or an OpenAI-compatible endpoint.

A scenario (or the suite, through ``llmsim_agent``) chooses its agent under ``agent:``; the prompt agent (an LLM
driven by a jinja2 template) stays in ``conversation.py``. Each kind here is resolved once per spec and run
(``AgentRuntime.driver``): the import of a python agent, its signature and whether it is async or a factory are
worked out then, never per turn. Per conversation ``AgentDriver.open`` gives an ``AgentSession`` whose
``reply`` answers one turn from the conversation so far, as OpenAI-style messages from the agent's side.

Code agents are called live by default: they are what changes between runs, while the customer and the judge
replay from the cache. ``agent_cache: true`` routes their replies through the cache too (``CachedSession``),
keyed by the agent's kind and identity (``module:name``, the URL without credentials, base URL + model), never
by header values or keys.

Trouble in the agent is an ``AgentError`` (kind ``agent_error``), never a score: a python agent's exception
is shown with its own traceback; an HTTP agent's failure after bounded retries names the URL, the status and
the start of its reply, with every header value scrubbed.
"""


from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pytest_llmsim.agents.base import (
    AgentContext,
    AgentDriver,
    AgentReply,
    AgentSession,
    read_multi_agent,
    reply_size_error,
    scrub_reply,
)
from pytest_llmsim.agents.http import HttpDriver
from pytest_llmsim.agents.openai import OpenAIDriver
from pytest_llmsim.agents.python import PythonDriver
from pytest_llmsim.agents.specs import describe_spec, object_agent_target
from pytest_llmsim.errors import AgentError, CacheError, CacheMissError, LlmsimError
from pytest_llmsim.llm.scrubbing import RunSecrets
from pytest_llmsim.model.scenario import ADAPTER_KINDS
from pytest_llmsim.replay.cache import request_key
from pytest_llmsim.replay.recordings import CURRENT as RECORDER

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec
    from pytest_llmsim.model.settings import RunSettings
    from pytest_llmsim.replay.cache import CallCache





# -- the cache around python and http agents -------------------------------------------------------------------------
class CachedSession(AgentSession):
    """``agent_cache: true``: replies recorded and replayed like LLM calls, keyed by the agent's kind, identity,
    seed and messages (no session id, header value or key)."""

    __slots__ = ("cache", "endpoint", "inner", "seed", "what")

    def __init__(self, inner: AgentSession, driver: AgentDriver, cache: CallCache, seed: int | None) -> None:
        self.inner, self.cache, self.seed = inner, cache, seed
        self.what = describe_spec(driver.spec)
        self.endpoint = f"agent:{driver.kind}:{driver.identity}"

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        descriptor = {"endpoint": self.endpoint, "model": self.endpoint, "messages": list(messages),
                      "temperature": None, "seed": self.seed, "max_tokens": None, "response_format": None,
                      "tools": None, "attempt": 0}
        key = request_key(descriptor)
        recorder = RECORDER.get()
        hit = recorder.lookup(key) if recorder is not None else None  # keyed by the agent itself: kept whole
        if hit is None and recorder is not None and recorder.exclusive:
            raise CacheMissError(recorder.miss_message(label, descriptor, "agent"))
        if hit is None:
            hit = self.cache.lookup(key, label=label)
        if hit is not None:
            if recorder is not None:
                recorder.add(key, descriptor, hit, label, "agent")
            if hit.get("agent_messages") or hit.get("handoffs"):  # a multi-agent reply: checked like a live one
                try:
                    multi = read_multi_agent({"messages": hit.get("agent_messages") or [],
                                              "handoffs": hit.get("handoffs") or [], "end": bool(hit.get("end"))})
                except TypeError as exc:
                    raise CacheError(f"{label}: the recorded reply of the {self.what} is unusable: {exc}; delete "
                                     "it and re-record with --llmsim-record=once") from None
                multi.latency_s, multi.cached = hit["latency_s"], True
                return multi
            return AgentReply(hit["text"], [dict(c) for c in hit.get("tool_calls") or []], bool(hit.get("end")),
                              latency_s=hit["latency_s"], cached=True)
        if not self.cache.mode.may_call_agent():
            raise CacheMissError(f"{label}: no recorded reply of the {self.endpoint.removeprefix('agent:')} agent "
                                 f"(agent_cache: true) in {self.cache.directory} and record mode is 'none'; record "
                                 "it with --llmsim-record=once, then commit the recordings/ it writes "
                                 "(.llmsim_cache/ is local: keep it out of git)")
        reply = await self.inner.reply(messages, label=label)
        too_large = reply_size_error(reply.text, reply.tool_calls, f"{label}: the {self.what}",
                                     handoffs=reply.handoffs)
        if too_large is not None:  # not stored: the conversation errors on it
            raise AgentError(too_large)
        response: dict[str, Any] = {"text": reply.text, "prompt_tokens": 0, "completion_tokens": 0,
                                    "latency_s": reply.latency_s, "model": self.endpoint}
        if reply.tool_calls:
            response["tool_calls"] = reply.tool_calls
        if reply.end:
            response["end"] = True
        if reply.messages:  # only then: entries of single-speaker replies stay as they were
            response["agent_messages"] = reply.messages
        if reply.handoffs:
            response["handoffs"] = reply.handoffs
        self.cache.store(key, descriptor, response, label)
        if recorder is not None:
            recorder.add(key, descriptor, response, label, "agent")
        return reply


class _ScrubbedSession(AgentSession):
    """A python agent's replies with the run's secrets scrubbed as they enter the conversation (an agent that
    repeats a key it holds gives ``***``), so the cache, recordings and reports never see them."""

    __slots__ = ("inner", "secrets")

    def __init__(self, inner: AgentSession, secrets: RunSecrets) -> None:
        self.inner, self.secrets = inner, secrets

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        return scrub_reply(await self.inner.reply(messages, label=label), self.secrets.scrub)


# -- the runtime -----------------------------------------------------------------------------------------------------
class AgentRuntime:
    """The code agents of one run: each spec resolved once (import, signature, HTTP client), closed at the end."""

    def __init__(self, settings: RunSettings, cache: CallCache, secrets: RunSecrets | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self._drivers: dict[tuple[str, Any, bool], tuple[AgentSpec, AgentDriver | AgentError]] = {}
        self._secrets = secrets if secrets is not None else RunSecrets(settings.endpoint)

    def driver(self, spec: AgentSpec, *, agent_cache: bool = False) -> AgentDriver:
        """The driver of ``spec`` (made on first use; a spec that cannot be used raises the same AgentError
        every time, without importing again)."""
        # Specs written alike (the same `defaults.agent` in every scenario of a file) share one driver: one
        # import, one HTTP connection pool, one view of whether the service is hung. An in-memory agent object
        # (the llmsim fixture) is its own driver.
        key = (("object", id(spec), agent_cache) if object_agent_target(spec) is not None
               else ("spec", spec.model_dump_json(exclude_unset=True), agent_cache))
        known = self._drivers.get(key)
        if known is None or (key[0] == "object" and known[0] is not spec):
            made: AgentDriver | AgentError
            try:
                made = self._make(spec, agent_cache)
            except AgentError as exc:
                made = exc
            known = (spec, made)
            self._drivers[key] = known
        if isinstance(known[1], AgentError):
            raise AgentError(str(known[1]))
        return known[1]

    def _make(self, spec: AgentSpec, agent_cache: bool) -> AgentDriver:
        self._secrets.add_spec(spec)
        if spec.python is not None:
            return PythonDriver(spec, self.settings.rootdir)
        if spec.http is not None:
            return HttpDriver(spec, self.settings, self._secrets)
        if spec.openai is not None:
            return OpenAIDriver(spec, self.settings, self.cache, use_cache=agent_cache, secrets=self._secrets)
        if spec.kind in ADAPTER_KINDS:  # a framework adapter: its module (and the framework) imported only now
            from pytest_llmsim.agents.adapters import make_driver

            return make_driver(spec, self.settings)
        raise LlmsimError(f"not a code agent: {spec!r}")

    async def open(self, spec: AgentSpec, context: AgentContext, *, agent_cache: bool, label: str
                   ) -> tuple[AgentDriver, AgentSession]:
        try:
            driver = self.driver(spec, agent_cache=agent_cache)
        except AgentError as exc:
            raise AgentError(f"{label}: {exc}") from None
        session = await driver.open(context, label=label)
        if driver.kind not in ("http", "openai"):  # those are scrubbed as they arrive; python and adapters here
            session = _ScrubbedSession(session, self._secrets)
        if agent_cache and driver.kind != "openai":  # the openai agent caches through its own LLM client
            session = CachedSession(session, driver, self.cache, context.seed)
        return driver, session

    def secrets(self) -> frozenset[str]:
        """Every secret of the run (``scrubbing.RunSecrets``): the endpoint's, the openai agents' keys, the http
        agents' header values, URL credentials and query values. Scrubbed from every stored text."""
        return self._secrets.values()

    async def aclose(self) -> None:
        for _, driver in list(self._drivers.values()):
            if isinstance(driver, AgentDriver):
                try:
                    await driver.aclose()
                except Exception:
                    pass
        self._drivers.clear()


def new_context(scenario_name: str, variables: Mapping[str, Any], seed: int | None) -> AgentContext:
    """A fresh context with a new per-conversation ``session_id`` (never part of a cache key)."""
    return AgentContext(scenario_name, MappingProxyType(dict(variables)), seed, f"llmsim-{uuid.uuid4().hex}")
