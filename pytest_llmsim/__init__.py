"""pytest-llmsim: conversational regression testing of LLM agents.

The engine (this package minus ``plugin``/``items``/``options``) never imports pytest and can be used from a
script::

    from pytest_llmsim import Runner, ScenarioJob, load_scenario_file
"""

from __future__ import annotations

from .errors import (
    CacheMissError,
    ConfigError,
    EndpointError,
    LlmsimError,
    PromptError,
    ScenarioError,
    VerdictError,
)
from .results import ScenarioResult
from .runner import Runner, ScenarioJob, run_scenario
from .scenario import Scenario, load_scenario_file
from .settings import EndpointSettings, RecordMode, RoleSettings, RunSettings

__version__ = "0.1.0"
__all__ = [
    "CacheMissError", "ConfigError", "EndpointError", "EndpointSettings", "LlmsimError", "PromptError",
    "RecordMode", "RoleSettings", "RunSettings", "Runner", "Scenario", "ScenarioError", "ScenarioJob",
    "ScenarioResult", "VerdictError", "load_scenario_file", "run_scenario",
]
