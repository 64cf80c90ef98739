"""pytest-llmsim: conversational regression testing of LLM agents.

Every package but ``plugin`` (the pytest front end) is free of pytest and can be used from a script::

    from pytest_llmsim import Runner, ScenarioJob, load_scenario_file

Names are imported on first use (PEP 562): the pytest plugin is loaded into every pytest run of an
environment that has this package installed, and a run without scenarios must not pay for importing openai.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CacheMissError": "errors", "CacheError": "errors", "NoAgentReplyError": "errors",
    "ConfigError": "errors", "EndpointError": "errors", "LlmsimError": "errors",
    "PromptError": "errors", "ScenarioError": "errors", "VerdictError": "errors",
    "ScenarioRunError": "errors", "MetricError": "errors", "AgentError": "errors", "ErrorKind": "errors",
    "ScenarioResult": "model.results",
    "AgentContext": "agents.base", "agent_factory": "agents.base",
    "Runner": "engine.runner", "ScenarioJob": "engine.runner", "run_scenario": "engine.runner",
    "score_transcript": "engine.runner",
    "Scenario": "model.scenario", "load_scenario_file": "model.scenario",
    "EndpointSettings": "model.settings", "RecordMode": "model.settings", "RoleSettings": "model.settings",
    "RunSettings": "model.settings",
    "Metric": "metrics.api", "LLMMetric": "metrics.api", "MetricResult": "metrics.api", "Conversation": "metrics.api",
    "load_transcript_file": "engine.transcripts",
    "combine": "model.trials", "derive_seed": "model.trials",
}
__all__ = [
    "AgentContext",
    "AgentError",
    "CacheError",
    "CacheMissError",
    "ConfigError",
    "Conversation",
    "EndpointError",
    "EndpointSettings",
    "ErrorKind",
    "LLMMetric",
    "LlmsimError",
    "Metric",
    "MetricError",
    "MetricResult",
    "NoAgentReplyError",
    "PromptError",
    "RecordMode",
    "RoleSettings",
    "RunSettings",
    "Runner",
    "Scenario",
    "ScenarioError",
    "ScenarioJob",
    "ScenarioResult",
    "ScenarioRunError",
    "VerdictError",
    "agent_factory",
    "combine",
    "derive_seed",
    "load_scenario_file",
    "load_transcript_file",
    "run_scenario",
    "score_transcript",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached in this module's globals: the submodule in ``sys.modules`` stays the one source, even where it is
    # imported again (pytest's in-process ``pytester`` runs restore ``sys.modules`` between sessions).
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from pytest_llmsim.engine.runner import Runner, ScenarioJob, run_scenario, score_transcript
    from pytest_llmsim.engine.transcripts import load_transcript_file
    from pytest_llmsim.errors import (
        CacheMissError,
        ConfigError,
        EndpointError,
        LlmsimError,
        MetricError,
        PromptError,
        ScenarioError,
        VerdictError,
    )
    from pytest_llmsim.metrics.api import Conversation, LLMMetric, Metric, MetricResult
    from pytest_llmsim.model.results import ScenarioResult
    from pytest_llmsim.model.scenario import Scenario, load_scenario_file
    from pytest_llmsim.model.settings import EndpointSettings, RecordMode, RoleSettings, RunSettings
    from pytest_llmsim.model.trials import combine, derive_seed
