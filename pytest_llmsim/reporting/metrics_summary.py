"""The metrics summary (``--llmsim-metrics-summary=PATH``): the evaluation module's ``summary_<timestamp>.json``
shape, one object per metric over every conversation of the run::

    {"timestamp": "2026-05-07T12:04:22+00:00", "run_id": "...", "interrupted": false,
     "num_conversations": 6, "unscored": ["s.yaml::c"],
     "metrics": {"rouge": {"average_score": 0.15, "num_evaluations": 5, "num_errors": 1,
                           "results": [{"id": "s.yaml::a", "scenario": "a", "score": 0.106, "passed": true,
                                        "explanation": "...", "details": {...}},
                                       {"id": "s.yaml::b", "scenario": "b", "score": null, "passed": null,
                                        "explanation": "<the error>", "details": {"error_kind": "verdict"},
                                        "error": true}, ...]}}}

``average_score`` is the mean of the scores the metric gave (null when it gave none); ``num_evaluations`` counts
the conversations it scored, ``num_errors`` those where it raised (an unparsable judge reply, a missing
reference): an error is never a score, so it is in ``results`` with a null score and counted apart, where the
evaluation module wrote a score of 0. A scenario with trials gives one result per trial (``id`` ends in
``[trial-k]``). Conversations that errored before any metric ran (an endpoint down, a bad scenario) are listed
under ``unscored``. Only the controller writes it, once per run (xdist workers send their records to it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.reporting.exports import atomic_write_text


def _conversations(record: ScenarioRecord) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(id, result dict) of each conversation of ``record``: its trials when it has several, else itself."""
    result = record.result
    if result.trials:
        for trial in result.trials:
            yield f"{result.nodeid}[trial-{trial.get('trial', '?')}]", trial
        return
    yield result.nodeid, result.to_dict()


def metrics_summary(records: Iterable[ScenarioRecord], *, timestamp: str, run_id: str = "",
                    interrupted: bool = False) -> dict[str, Any]:
    """The summary of ``records`` (a run's, in order)."""
    metrics: dict[str, dict[str, Any]] = {}
    unscored: list[str] = []
    conversations = 0
    for record in records:
        for conversation_id, result in _conversations(record):
            conversations += 1
            entries = [m for m in result.get("metrics") or () if isinstance(m, Mapping)]
            if not entries:
                if result.get("status") == "error":
                    unscored.append(conversation_id)
                continue
            for metric in entries:
                name = str(metric.get("name", "?"))
                block = metrics.setdefault(name, {"average_score": None, "num_evaluations": 0, "num_errors": 0,
                                                  "results": [], "_scores": []})
                entry: dict[str, Any] = {"id": conversation_id, "scenario": result.get("scenario", ""),
                                         "score": metric.get("score"), "passed": metric.get("passed"),
                                         "explanation": metric.get("reason", ""),
                                         "details": dict(metric.get("details") or {})}
                if metric.get("error"):
                    entry["score"] = None
                    entry["error"] = True
                    entry["explanation"] = str(result.get("error_message") or metric.get("reason", ""))
                    entry["details"] = {"error_kind": metric.get("error")}
                    block["num_errors"] += 1
                else:
                    block["num_evaluations"] += 1
                    if isinstance(metric.get("score"), int | float) and not isinstance(metric.get("score"), bool):
                        block["_scores"].append(float(metric["score"]))
                block["results"].append(entry)
    for block in metrics.values():
        scores = block.pop("_scores")
        block["average_score"] = sum(scores) / len(scores) if scores else None
    return {"timestamp": timestamp, "run_id": run_id, "interrupted": interrupted,
            "num_conversations": conversations, "unscored": unscored, "metrics": metrics}


def write_metrics_summary(path: Path, records: Iterable[ScenarioRecord], *, timestamp: str, run_id: str = "",
                          interrupted: bool = False) -> Path:
    """Write ``metrics_summary`` to ``path`` atomically (a reader sees the old file or the whole new one)."""
    data = metrics_summary(records, timestamp=timestamp, run_id=run_id, interrupted=interrupted)
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n")
    return path
