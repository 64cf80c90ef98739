"""Per-conversation files (``--llmsim-chats-dir DIR``): ``chat_<scenario>_trial<k>.json`` and, with
``--llmsim-readable``, a ``.txt`` beside it for people, as the evaluation module this project descends from
wrote them (no pytest).

The JSON holds the scenario's node id and name, the trial and its seed, the verdict, every metric, how the
call ended, the turns (with their tool calls), the tool names in call order and the usage per role and model.
Each file is written whole (temporary file, then rename). A scenario name that two files of one run share gets
a short hash of its node id in the file name, so neither conversation overwrites the other.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_llmsim.model.results import ScenarioRecord, ScenarioResult, outcome_of_status
from pytest_llmsim.model.trials import trial_of_nodeid
from pytest_llmsim.reporting.exports import atomic_write_text

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
_claimed: dict[Path, str] = {}  # file -> node id, for this process's run
_lock = threading.Lock()
# Scenario names that several collected scenarios share: their files always carry a hash of the node id. Every
# xdist worker collects the same items, so every process names the same conversation's file the same way (the
# first-come claim above alone would let two workers both take ``chat_a_trial1.json``).
_shared_names: set[str] = set()


def share_names(names: Iterable[str]) -> None:
    """Declare scenario names that more than one collected scenario uses (the pytest plugin, after collection)."""
    _shared_names.update(names)


def chat_document(result: ScenarioResult, *, trial: int = 1, seed: int | None = None) -> dict[str, Any]:
    return {
        "nodeid": result.nodeid, "scenario": result.scenario, "trial": trial, "seed": seed,
        "status": str(result.status), "score": result.score, "min_score": result.min_score,
        "comment": result.comment, "metrics": [dict(metric) for metric in result.metrics],
        "ended_by": result.ended_by, "end_reason": result.end_reason,
        "turns": [_turn(turn) for turn in result.transcript],
        "tool_calls": result.tool_calls,
        "usage": [dict(vars(usage)) for usage in result.usage],
        "error_kind": str(result.error_kind or ""), "error": result.error_message,
    }


def _turn(turn: dict[str, Any]) -> dict[str, Any]:
    data = {"role": turn.get("role"), "text": turn.get("text", ""), "tool_calls": list(turn.get("tool_calls") or [])}
    if turn.get("scripted"):
        data["scripted"] = True
    for name in ("messages", "handoffs"):  # a multi-agent turn: who said what, who handed to whom
        if turn.get(name):
            data[name] = [dict(item) for item in turn[name]]
    return data


def readable_text(result: ScenarioResult, *, trial: int = 1, seed: int | None = None) -> str:
    from pytest_llmsim.reporting.terminal import record_text

    record = ScenarioRecord(result=result, outcome=outcome_of_status(result.status))
    return f"{result.nodeid} (trial {trial}, seed {seed})\n{record_text(record)}"


def chat_path(directory: Path, result: ScenarioResult, trial: int = 1) -> Path:
    """The file of ``result``'s conversation: ``chat_<scenario>_trial<k>.json``, or with a hash of its node id when
    another scenario of the same name already has that file in this run."""
    name = _UNSAFE.sub("_", result.scenario).strip("._")[:100] or "scenario"
    nodeid = trial_of_nodeid(result.nodeid)[0]  # a trial item's file is its scenario's trial file
    digest = hashlib.sha256(nodeid.encode("utf-8")).hexdigest()[:8]
    if result.scenario in _shared_names:
        return directory / f"chat_{name}_{digest}_trial{trial}.json"
    path = directory / f"chat_{name}_trial{trial}.json"
    with _lock:
        owner = _claimed.setdefault(path, nodeid)
        if owner != nodeid:
            path = directory / f"chat_{name}_{digest}_trial{trial}.json"
            _claimed[path] = nodeid
    return path


def write_chat(directory: Path, result: ScenarioResult, *, readable: bool = False, trial: int = 1,
               seed: int | None = None) -> Path:
    """Write ``result``'s conversation file (and its ``.txt`` when ``readable``); the JSON file's path. OSError
    is the caller's to report."""
    directory.mkdir(parents=True, exist_ok=True)
    path = chat_path(directory, result, trial)
    text = json.dumps(chat_document(result, trial=trial, seed=seed), ensure_ascii=False, indent=2) + "\n"
    atomic_write_text(path, text)
    if readable:
        atomic_write_text(path.with_suffix(".txt"), readable_text(result, trial=trial, seed=seed))
    return path
