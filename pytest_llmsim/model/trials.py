"""Trials: k conversations of one scenario, each with its own seed, and what they say together (no pytest).

An LLM conversation is a sample, not a fact: a scenario that passes once may fail the next time. With
``trials: k`` (scenario field) or ``llmsim_trials`` the scenario is simulated k times:

* **Seeds.** Trial 1 is the scenario as written (its ``SEED``, else the run's seed), so turning trials on keeps
  the cache and the recording of what ran before; trial n > 1 runs with ``SEED = derive_seed(seed, n)``: its
  own cache keys and its own recording (``<scenario>.trial-n.json``). A second run replays all k.
* **Verdict of the scenario.** A trial that errored makes the scenario an error (no verdict is made up from the
  others). Otherwise the scenario passes when its pass rate (passed trials / k) reaches ``min_pass_rate``
  (scenario field, else ``llmsim_scenario_min_pass_rate``, default 1.0: every trial must pass).
* **Figures.** pass rate, pass^k (every trial passed), pass@k (at least one passed), flaky (some passed, some
  did not), mean score. ``scenario_groups`` computes them for a run, whether the trials were one item per
  scenario (``combine``d into one result with a ``trials`` list) or one item per trial (``name[trial-2]``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_llmsim.model.results import (
    ERROR,
    FAILED,
    PASSED,
    ModelUsage,
    Outcome,
    ScenarioRecord,
    ScenarioResult,
    Status,
    TrialStats,
    result_stats,
    stats_of,
)

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.model.settings import RunSettings

MAX_TRIALS = 100
_TRIAL_ID_RE = re.compile(r"\[trial-(\d+)\]$")
_COUNTED = frozenset({Outcome.PASSED, Outcome.XPASSED, Outcome.FAILED, Outcome.ERROR})
_PASSING = frozenset({Outcome.PASSED, Outcome.XPASSED})


def derive_seed(seed: int, trial: int, *, salt: str = "trial") -> int:
    """Trial ``trial``'s seed: ``seed`` itself for trial 1, else a hash of both (stable across runs, machines
    and Python versions; spread over 0..MAX_SEED so neighbouring seeds do not give neighbouring trials).
    ``salt`` keeps other sequences (the judge's repeats) apart from the trials'."""
    if trial <= 1:
        return seed
    from pytest_llmsim.model.scenario import MAX_SEED  # (pydantic: not for a run that only reads results)

    digest = hashlib.sha256(f"llmsim-{salt}:{seed}:{trial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED + 1)


def base_seed(scenario: Scenario, settings: RunSettings) -> int:
    return scenario.seed if scenario.seed is not None else settings.default_seed


def trial_scenario(scenario: Scenario, settings: RunSettings, trial: int) -> Scenario:
    """The scenario as trial ``trial`` runs it: trial 1 unchanged, trial n > 1 with its derived ``SEED``."""
    if trial <= 1:
        return scenario
    seed = derive_seed(base_seed(scenario, settings), trial)
    return scenario.model_copy(update={"variables": {**scenario.variables, "SEED": seed}})


def trial_count(scenario: Scenario, settings: RunSettings) -> int:
    return scenario.trials if scenario.trials is not None else settings.trials


def min_pass_rate(scenario: Scenario, settings: RunSettings) -> float:
    own = scenario.min_pass_rate
    return float(own) if own is not None else settings.scenario_min_pass_rate


def trial_of_nodeid(nodeid: str) -> tuple[str, int | None]:
    """``("s.json::a", 2)`` for ``s.json::a[trial-2]``; ``(nodeid, None)`` for an id without a trial."""
    match = _TRIAL_ID_RE.search(nodeid)
    return (nodeid[:match.start()], int(match.group(1))) if match else (nodeid, None)


def trial_results(result: ScenarioResult) -> list[ScenarioResult]:
    """The trials of a combined result (empty for a single conversation)."""
    return [ScenarioResult.from_dict(trial) for trial in result.trials if isinstance(trial, Mapping)]


def combine(trials: Sequence[ScenarioResult], required_rate: float) -> ScenarioResult:
    """One result for a scenario's trials (in trial order): its verdict by the pass rate, one trial's conversation
    as its transcript, score and metrics (see below), the usage of all."""
    assert trials, "combine needs at least one trial"
    stats = stats_of([t.status for t in trials], [t.score for t in trials])
    errored = next((t for t in trials if t.status == ERROR), None)
    passes = stats.pass_rate is not None and stats.pass_rate + 1e-9 >= required_rate
    # The conversation shown agrees with the verdict: an errored trial, else the first failed trial of a failed
    # scenario, else the first passed trial of a passed one.
    shown = errored or next((t for t in trials if (t.status == PASSED) == passes), trials[0])
    combined = ScenarioResult(
        scenario=shown.scenario, nodeid=trials[0].nodeid, source=shown.source, status=PASSED,
        min_score=shown.min_score, score=shown.score, comment=shown.comment, raw_verdict=shown.raw_verdict,
        transcript=[dict(turn) for turn in shown.transcript], ended_by=shown.ended_by, end_reason=shown.end_reason,
        metrics=[dict(metric) for metric in shown.metrics], recording=shown.recording,
        recording_state=shown.recording_state, chat_file=shown.chat_file, trial=0, seed=shown.seed,
        shown_trial=shown.trial, min_pass_rate=required_rate,
        duration_seconds=round(math.fsum(t.duration_seconds for t in trials), 4),
        usage=_merged_usage(trials), trials=[t.to_dict() for t in trials], tags=list(shown.tags),
    )
    if errored is not None:
        combined.status = ERROR
        combined.error_kind = errored.error_kind
        others = f"{stats.passed} passed, {stats.failed} failed, {stats.errored} errored of {stats.trials} trials"
        combined.error_message = f"trial {errored.trial} of {len(trials)} (seed {errored.seed}): " \
                                 f"{errored.error_message} [{others}]"
    elif not passes:
        combined.status = FAILED
    return combined


def _merged_usage(trials: Sequence[ScenarioResult]) -> list[ModelUsage]:
    merged: dict[tuple[str, str], ModelUsage] = {}
    for trial in trials:
        for usage in trial.usage:
            total = merged.setdefault((usage.role, usage.model), ModelUsage(usage.role, usage.model))
            for name, value in vars(usage).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(total, name, getattr(total, name) + value)
    return list(merged.values())


# -- a run's scenarios, however their trials were run ------------------------------------------------------------
@dataclass(frozen=True)
class ScenarioGroup:
    """One scenario of a run and its trials' stats (a scenario without trials is one trial)."""

    nodeid: str
    scenario: str
    stats: TrialStats


def scenario_groups(records: Iterable[ScenarioRecord]) -> list[ScenarioGroup]:
    """The run's scenarios that count (by pytest's outcome: skipped and xfailed ones are left out), in order.

    A combined record is one scenario with its trials; trial items (``name[trial-n]``) of one scenario are
    gathered into one; any other record is a scenario of one trial."""
    order: list[str] = []
    gathered: dict[str, tuple[str, list[Status], list[int | None]]] = {}
    for record in records:
        if record.outcome not in _COUNTED:
            continue
        result = record.result
        entry: tuple[str, str, list[Status], list[int | None]]
        if result.trials:
            stats = result_stats(result)
            statuses = [PASSED] * stats.passed + [FAILED] * stats.failed + [ERROR] * stats.errored
            entry = (record.nodeid, result.scenario, statuses, list(stats.scores))
        else:
            base, trial = trial_of_nodeid(record.nodeid) if result.trial else (record.nodeid, None)
            passed = PASSED if record.outcome in _PASSING else (ERROR if record.outcome == Outcome.ERROR else FAILED)
            entry = (base if trial is not None else record.nodeid, result.scenario, [passed], [result.score])
        key, name, statuses, scores = entry
        if key not in gathered:
            order.append(key)
            gathered[key] = (name, [], [])
        gathered[key][1].extend(statuses)
        gathered[key][2].extend(scores)
    return [ScenarioGroup(key, gathered[key][0], stats_of(gathered[key][1], gathered[key][2])) for key in order]


def scored_values(records: Iterable[ScenarioRecord]) -> list[int]:
    """Every scored conversation's score among the records that count: each trial of a combined record."""
    scores: list[int] = []
    for record in records:
        if record.outcome not in _COUNTED:
            continue
        if record.result.trials:
            scores.extend(result_stats(record.result).scores)
        elif record.score is not None:
            scores.append(int(record.score))
    return scores
