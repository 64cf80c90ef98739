"""Which files and pytest node ids are scenarios: cheap checks with no pydantic or yaml import."""

from __future__ import annotations

SCENARIO_SUFFIXES = (".json", ".yaml", ".yml")


def is_scenario_nodeid(nodeid: str) -> bool:
    """True for a pytest node id whose file part is a scenario file (``dir/file.json::name``)."""
    return nodeid.split("::", 1)[0].endswith(SCENARIO_SUFFIXES)
