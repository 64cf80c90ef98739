"""Run records and the run summary: pure functions over plain dicts (no pytest).

A *record* is one scenario run as exports write it: ``ScenarioResult.to_dict()`` plus its cost, token split
and run metadata (``make_record``). ``summarize`` turns a list of records, or of bare ``to_dict()`` results,
into the run totals that the terminal, the HTML report, the exports and the gates all show.

Conventions, fixed here so every surface agrees:

* ``successful_scenarios`` passed (score >= min score), ``failed_scenarios`` scored below their minimum,
  ``errored_scenarios`` got no score (endpoint, template, verdict errors, invalid scenarios); the three add up
  to ``total_scenarios``. ``success_rate`` = successful / total (errors count against it). ``status`` is the
  scenario's own verdict: an xfail-marked scenario that scored below its minimum counts as failed here (its
  pytest outcome, ``xfailed``, is in the record's ``outcome``).
* Score statistics are over scored scenarios only. ``std`` is the *population* standard deviation
  (``statistics.pstdev``): the run's scores are the whole population described, not a sample of one, and a
  single score has std 0.
* The cost block is what this run spent: ``total_cost_usd``, ``total_tokens`` and ``total_requests`` count
  live calls only, ``average_cost_per_request`` = total_cost_usd / total_requests. Calls replayed from the cache
  are counted apart (``replayed_requests``, ``replayed_tokens``, ``saved_cost_usd``); ``prompt_tokens`` and
  ``completion_tokens`` count every call, live or replayed, like the per-record fields.
* Values are rounded once, here: statistics and rates to 4 decimals, run costs to 6 (per-record costs to 8),
  so the terminal, HTML and exports print the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .pricing import ScenarioCost
from .results import ERROR, FAILED, PASSED, ScenarioResult

STAT_DECIMALS = 4
RUN_COST_DECIMALS = 6
RECORD_COST_DECIMALS = 8

# Flat per-record fields in export order (CSV columns); JSON/NDJSON records add ``transcript`` and ``usage``.
RECORD_FIELDS = (
    "session_id", "nodeid", "scenario", "source", "status", "outcome", "score", "min_score", "comment",
    "total_turns", "ended_by", "end_reason", "duration_seconds", "prompt_tokens", "completion_tokens",
    "total_tokens", "live_calls", "cached_calls", "live_tokens", "replayed_tokens", "cached", "cost_usd",
    "saved_cost_usd", "unpriced_models", "error_kind", "error_message", "worker",
)


def make_record(result: Mapping[str, Any], cost: ScenarioCost, *, session_id: str, outcome: str,
                worker: str = "") -> dict[str, Any]:
    """One export record from a ``ScenarioResult.to_dict()`` and its cost."""
    scenario = ScenarioResult.from_dict(result)
    return {
        "session_id": session_id,
        "nodeid": scenario.nodeid,
        "scenario": scenario.scenario,
        "source": scenario.source,
        "status": scenario.status,
        "outcome": outcome,
        "score": scenario.score,
        "min_score": scenario.min_score,
        "comment": scenario.comment,
        "total_turns": scenario.total_turns,
        "ended_by": scenario.ended_by,
        "end_reason": scenario.end_reason,
        "duration_seconds": float(scenario.duration_seconds),
        "prompt_tokens": scenario.prompt_tokens,
        "completion_tokens": scenario.completion_tokens,
        "total_tokens": scenario.prompt_tokens + scenario.completion_tokens,
        "live_calls": scenario.live_calls,
        "cached_calls": scenario.cached_calls,
        "live_tokens": scenario.live_tokens,
        "replayed_tokens": scenario.replayed_tokens,
        "cached": scenario.fully_cached,
        "cost_usd": round(cost.spent_usd, RECORD_COST_DECIMALS),
        "saved_cost_usd": round(cost.saved_usd, RECORD_COST_DECIMALS),
        "unpriced_models": list(cost.unpriced_models),
        "error_kind": scenario.error_kind,
        "error_message": scenario.error_message,
        "worker": worker,
        "raw_verdict": scenario.raw_verdict,
        "transcript": scenario.transcript,
        "usage": [dict(vars(usage)) for usage in scenario.usage],
    }


@dataclass(frozen=True)
class ScoreStatistics:
    mean: float | None = None
    median: float | None = None
    std: float | None = None
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class RunSummary:
    total_scenarios: int = 0
    successful_scenarios: int = 0
    failed_scenarios: int = 0
    errored_scenarios: int = 0
    success_rate: float | None = None
    score_statistics: ScoreStatistics = field(default_factory=ScoreStatistics)
    score_distribution: dict[str, int] = field(default_factory=lambda: {"score_1": 0, "score_2": 0, "score_3": 0})
    total_cost_usd: float = 0.0
    total_tokens: int = 0
    total_requests: int = 0
    average_cost_per_request: float = 0.0
    saved_cost_usd: float = 0.0
    replayed_requests: int = 0
    replayed_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_duration_seconds: float = 0.0
    unpriced_models: list[str] = field(default_factory=list)

    @property
    def scores_count(self) -> int:
        return sum(self.score_distribution.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    return int(value) if value not in (None, "") else 0


def _live_and_replayed_tokens(record: Mapping[str, Any]) -> tuple[int, int]:
    if "live_tokens" in record and "replayed_tokens" in record:
        return _int(record, "live_tokens"), _int(record, "replayed_tokens")
    usage = record.get("usage") or []
    live = sum(int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0)) for u in usage)
    replayed = sum(int(u.get("cached_prompt_tokens", 0)) + int(u.get("cached_completion_tokens", 0)) for u in usage)
    return live, replayed


def summarize(records: Iterable[Mapping[str, Any]]) -> RunSummary:
    """Run totals over ``records`` (one per scenario run; see the module docstring for the conventions)."""
    rows: Sequence[Mapping[str, Any]] = list(records)
    statuses = [str(r.get("status", ERROR)) for r in rows]
    scores = [int(r["score"]) for r in rows if r.get("score") not in (None, "")]
    distribution = {f"score_{n}": 0 for n in (1, 2, 3)}
    for score in scores:
        key = f"score_{score}"
        distribution[key] = distribution.get(key, 0) + 1
    if scores:
        stats = ScoreStatistics(
            mean=round(statistics.fmean(scores), STAT_DECIMALS),
            median=round(float(statistics.median(scores)), STAT_DECIMALS),
            std=round(statistics.pstdev(scores), STAT_DECIMALS),
            min=min(scores),
            max=max(scores),
        )
    else:
        stats = ScoreStatistics()
    total = len(rows)
    successful = statuses.count(PASSED)
    failed = statuses.count(FAILED)
    live_tokens = replayed_tokens = 0
    for record in rows:
        live, replayed = _live_and_replayed_tokens(record)
        live_tokens += live
        replayed_tokens += replayed
    spent = round(math.fsum(float(r.get("cost_usd") or 0.0) for r in rows), RUN_COST_DECIMALS)
    requests = sum(_int(r, "live_calls") for r in rows)
    unpriced = sorted({str(m) for r in rows for m in (r.get("unpriced_models") or [])})
    return RunSummary(
        total_scenarios=total,
        successful_scenarios=successful,
        failed_scenarios=failed,
        errored_scenarios=total - successful - failed,
        success_rate=round(successful / total, STAT_DECIMALS) if total else None,
        score_statistics=stats,
        score_distribution=distribution,
        total_cost_usd=spent,
        total_tokens=live_tokens,
        total_requests=requests,
        average_cost_per_request=round(spent / requests, RECORD_COST_DECIMALS) if requests else 0.0,
        saved_cost_usd=round(math.fsum(float(r.get("saved_cost_usd") or 0.0) for r in rows), RUN_COST_DECIMALS),
        replayed_requests=sum(_int(r, "cached_calls") for r in rows),
        replayed_tokens=replayed_tokens,
        prompt_tokens=sum(_int(r, "prompt_tokens") for r in rows),
        completion_tokens=sum(_int(r, "completion_tokens") for r in rows),
        total_duration_seconds=round(math.fsum(float(r.get("duration_seconds") or 0.0) for r in rows), 4),
        unpriced_models=unpriced,
    )


@dataclass(frozen=True)
class Gates:
    """Suite-level thresholds; None = not set. ``min_pass_rate`` is a fraction (0.9 = 90 %)."""

    min_mean_score: float | None = None
    min_pass_rate: float | None = None
    max_cost_usd: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.min_mean_score, self.min_pass_rate, self.max_cost_usd))

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def missed_gates(summary: RunSummary, gates: Gates) -> list[str]:
    """One line per gate the run missed (empty when all hold). Gates are not checked when no scenario ran."""
    if summary.total_scenarios == 0:
        return []
    missed = []
    if gates.min_mean_score is not None:
        mean = summary.score_statistics.mean
        if mean is None:
            missed.append(f"mean score: no scenario was scored ({summary.errored_scenarios} errored), minimum "
                          f"{gates.min_mean_score:g} (llmsim_min_mean_score)")
        elif mean < gates.min_mean_score:
            missed.append(f"mean score {mean:g} is below the minimum {gates.min_mean_score:g} "
                          f"(llmsim_min_mean_score)")
    if gates.min_pass_rate is not None and summary.success_rate is not None \
            and summary.success_rate < gates.min_pass_rate:
        missed.append(f"pass rate {summary.success_rate:.1%} ({summary.successful_scenarios} of "
                      f"{summary.total_scenarios} scenarios) is below the minimum {gates.min_pass_rate:.1%} "
                      f"(llmsim_min_pass_rate)")
    if gates.max_cost_usd is not None and summary.total_cost_usd > gates.max_cost_usd:
        missed.append(f"cost ${summary.total_cost_usd:.6f} spent on live calls is above the maximum "
                      f"${gates.max_cost_usd:g} (llmsim_max_cost_usd)")
    return missed
