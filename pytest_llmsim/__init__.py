"""pytest-llmsim: conversational regression testing of LLM agents.

The engine (this package minus the pytest front end: ``plugin``, ``session``, ``items``, ``options``,
``report_plugin``, ``report_options``, ``html_hooks``, ``fixture``; ``starter`` writes files only) never
imports pytest and can be used from a script::

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
    "ScenarioResult": "results", "ScenarioRunError": "items",
    "AgentContext": "agents", "agent_factory": "agents", "AgentError": "errors",
    "Runner": "runner", "ScenarioJob": "runner", "run_scenario": "runner",
    "Scenario": "scenario", "load_scenario_file": "scenario",
    "EndpointSettings": "settings", "RecordMode": "settings", "RoleSettings": "settings", "RunSettings": "settings",
    "Metric": "metrics", "LLMMetric": "metrics", "MetricResult": "metrics", "Conversation": "metrics",
    "MetricError": "metrics",
    "load_transcript_file": "transcripts", "score_transcript": "runner",
    "combine": "trials", "derive_seed": "trials",
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
    from .errors import (
        CacheMissError,
        ConfigError,
        EndpointError,
        LlmsimError,
        PromptError,
        ScenarioError,
        VerdictError,
    )
    from .metrics import Conversation, LLMMetric, Metric, MetricError, MetricResult
    from .results import ScenarioResult
    from .runner import Runner, ScenarioJob, run_scenario, score_transcript
    from .scenario import Scenario, load_scenario_file
    from .settings import EndpointSettings, RecordMode, RoleSettings, RunSettings
    from .transcripts import load_transcript_file
    from .trials import combine, derive_seed
