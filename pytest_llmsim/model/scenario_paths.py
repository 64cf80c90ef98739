"""Which files and pytest node ids are scenarios: cheap checks with no pydantic or yaml import."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

SCENARIO_SUFFIXES = (".json", ".yaml", ".yml")
TRANSCRIPT_SUFFIXES = (".json", ".jsonl")


def is_scenario_nodeid(nodeid: str) -> bool:
    """True for a pytest node id whose file part is a scenario or transcript file (``dir/file.json::name``)."""
    return nodeid.split("::", 1)[0].endswith(SCENARIO_SUFFIXES + TRANSCRIPT_SUFFIXES)


def under_llmsim_paths(rel: str, patterns: Iterable[str]) -> bool:
    """``rel`` (a posix path relative to the rootdir) matches an ``llmsim_paths`` entry: a glob, ``.``, the path
    itself or a folder above it. pytest's collection and ``llmsim run FOLDER`` both decide with this."""
    for pattern in (p.strip().strip("/") for p in patterns):
        if not pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatch(rel, pattern):
                return True
        elif pattern == "." or rel == pattern or rel.startswith(pattern + "/"):
            return True
    return False
