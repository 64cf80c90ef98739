"""The openai agent: an OpenAI-compatible endpoint of the user's own (its model, key and base URL), called
through the package's client."""


from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pytest_llmsim.agents.base import (
    AgentContext,
    AgentDriver,
    AgentReply,
    AgentSession,
    agent_name,
    normalize_tool_calls,
)
from pytest_llmsim.errors import AgentError, EndpointError
from pytest_llmsim.llm.scrubbing import RunSecrets
from pytest_llmsim.model.settings import EndpointSettings, redact_url

if TYPE_CHECKING:
    from pytest_llmsim.llm.client import LLMClient
    from pytest_llmsim.model.scenario import AgentSpec, OpenAIAgentSpec
    from pytest_llmsim.model.settings import RunSettings
    from pytest_llmsim.replay.cache import CallCache





# -- openai ----------------------------------------------------------------------------------------------------------
class _OpenAISession(AgentSession):
    __slots__ = ("context", "driver")

    def __init__(self, driver: OpenAIDriver, context: AgentContext) -> None:
        self.driver, self.context = driver, context

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        return await self.driver.complete(messages, self.context, label=label)


def openai_agent_key(spec: OpenAIAgentSpec) -> str:
    """The openai agent's API key: the value of its ``api_key_env`` variable, or "" when the scenario says the
    endpoint needs none (``api_key_env: null``). A variable that is unset or empty, or no ``api_key_env`` at all,
    is an AgentError naming the field (and the variable): a placeholder key would only fail later, as a 401."""
    if spec.api_key_env is None:
        if "api_key_env" in spec.model_fields_set:
            return ""
        raise AgentError("agent.openai.api_key_env is not set: name the environment variable holding the agent "
                         "endpoint's API key (api_key_env: MY_AGENT_KEY), or write api_key_env: null if the "
                         "endpoint needs no key")
    key = os.environ.get(spec.api_key_env, "")
    if not key:
        state = "empty" if spec.api_key_env in os.environ else "not set"
        raise AgentError(f"agent.openai.api_key_env names the environment variable {spec.api_key_env}, which is "
                         f"{state}: set it to the agent endpoint's API key, or write api_key_env: null if the "
                         "endpoint needs no key")
    return key


class OpenAIDriver(AgentDriver):
    """``agent: {openai: {base_url, model}}``: the user's agent as an OpenAI-compatible chat endpoint, with its own
    client (retries, deadline, fail-fast) apart from the customer's and the judge's endpoint."""

    kind = "openai"
    results_only = True

    def __init__(self, spec: AgentSpec, settings: RunSettings, cache: CallCache, use_cache: bool,
                 secrets: RunSecrets | None = None) -> None:
        super().__init__(spec)
        assert spec.openai is not None
        from pytest_llmsim.llm.client import LLMClient
        from pytest_llmsim.llm.rate_limits import RateLimiter

        self.openai: OpenAIAgentSpec = spec.openai
        key = openai_agent_key(self.openai)
        base = settings.endpoint
        self.endpoint = EndpointSettings(
            base_url=self.openai.base_url, api_key=key, request_timeout=base.request_timeout,
            max_retries=base.max_retries, backoff_base=base.backoff_base, backoff_max=base.backoff_max,
            rate_limit_wait=base.rate_limit_wait, http_backend=base.http_backend,
            description=f"the agent's endpoint {redact_url(self.openai.base_url)}")
        # The run's secrets: this client adds its key and URL query values, and scrubs the agent's replies.
        self.client: LLMClient = LLMClient(self.endpoint, cache, RateLimiter(), own_endpoint=False, secrets=secrets)
        self.temperature = self.openai.temperature if self.openai.temperature is not None \
            else settings.agent.temperature
        self.max_tokens = self.openai.max_tokens or settings.agent.max_tokens
        self.use_cache = use_cache

    async def complete(self, messages: list[dict[str, Any]], context: AgentContext, *, label: str) -> AgentReply:
        from pytest_llmsim.llm.client import LLMRequest
        from pytest_llmsim.model.prompts import OPENING_CUE

        history = list(messages) if messages else [{"role": "user", "content": OPENING_CUE}]
        if self.openai.system:
            history.insert(0, {"role": "system", "content": self.openai.system})
        request = LLMRequest(role="agent", model=self.openai.model, messages=tuple(history),
                             temperature=self.temperature, max_tokens=self.max_tokens, seed=context.seed)
        try:
            reply = await self.client.complete(request, label=label, use_cache=self.use_cache)
        except EndpointError as exc:
            raise AgentError(f"the agent's OpenAI-compatible endpoint failed: {exc}") from None
        try:
            calls = normalize_tool_calls(reply.tool_calls)
            messages = []
            if reply.name:  # OpenAI's ``name`` on the assistant message: the speaker
                message: dict[str, Any] = {"agent": agent_name(reply.name, "the assistant message's name"),
                                           "content": reply.text}
                if calls:
                    message["tool_calls"] = calls
                messages.append(message)
        except TypeError as exc:
            raise AgentError(f"{label}: the agent's endpoint {redact_url(self.openai.base_url)} returned an unusable "
                             f"reply: {exc}") from None
        return AgentReply(reply.text, calls, False, reply.prompt_tokens, reply.completion_tokens, reply.latency_s,
                          reply.cached, reply.model, metered=True, messages=messages)

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        return _OpenAISession(self, context)

    async def aclose(self) -> None:
        await self.client.aclose()


