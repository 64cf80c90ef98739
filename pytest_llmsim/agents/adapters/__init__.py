"""Framework adapters (no pytest): ``agent: {openai_agents: "pkg.mod:agent"}``, ``{langgraph: ...}``,
``{pydantic_ai: ...}``, ``{semantic_kernel: ...}``, ``{autogen: ...}``, ``{google_adk: ...}``.

Each runs the user's own framework object (or a factory making one per conversation, given the scenario's agent
endpoint) and reads who spoke, the handoffs and the tool calls with their results from the framework's own run
result or events, into one multi-speaker turn (``common.Turn``). The framework is imported only when a scenario
names its adapter (``make_driver``); a missing one is an AgentError naming the extra to install.
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pytest_llmsim.errors import AgentError

if TYPE_CHECKING:
    from pytest_llmsim.agents.adapters.common import AdapterDriver
    from pytest_llmsim.model.scenario import AgentSpec
    from pytest_llmsim.model.settings import RunSettings

# kind -> (module in this package, the pytest-llmsim extra that installs the framework, the framework's name)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "openai_agents": ("openai_agents", "openai-agents", "the OpenAI Agents SDK (openai-agents)"),
    "langgraph": ("langgraph", "langgraph", "LangGraph (langgraph, langchain-core)"),
    "pydantic_ai": ("pydantic_ai", "pydantic-ai", "pydantic-ai (pydantic-ai-slim[openai])"),
    "semantic_kernel": ("semantic_kernel", "semantic-kernel", "Semantic Kernel (semantic-kernel)"),
    "autogen": ("autogen", "autogen", "AutoGen AgentChat (autogen-agentchat, autogen-ext[openai])"),
    "google_adk": ("google_adk", "google-adk", "Google ADK (google-adk[openai])"),
}


def make_driver(spec: AgentSpec, settings: RunSettings) -> AdapterDriver:
    """The driver of a framework adapter spec: imports its module here (and the framework with it)."""
    module_name, _, _ = ADAPTERS[spec.kind]
    module = importlib.import_module(f"pytest_llmsim.agents.adapters.{module_name}")
    driver: AdapterDriver = module.Driver(spec, settings)
    return driver


def missing_framework(kind: str, exc: ImportError) -> AgentError:
    """The one-line error for an adapter whose framework is not installed."""
    _, extra, name = ADAPTERS[kind]
    return AgentError(f"agent {{{kind}: ...}} needs {name}, which is not installed ({exc}): "
                      f"pip install 'pytest-llmsim[{extra}]'")
