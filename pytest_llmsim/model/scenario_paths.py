"""Which files and pytest node ids are scenarios: cheap checks with no pydantic or yaml import."""

from __future__ import annotations

SCENARIO_SUFFIXES = (".json", ".yaml", ".yml")
TRANSCRIPT_SUFFIXES = (".json", ".jsonl")


def is_scenario_nodeid(nodeid: str) -> bool:
    """True for a pytest node id whose file part is a scenario or transcript file (``dir/file.json::name``)."""
    return nodeid.split("::", 1)[0].endswith(SCENARIO_SUFFIXES + TRANSCRIPT_SUFFIXES)
