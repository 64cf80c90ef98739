"""Cut-points for the ``logprobs`` judge, fitted on labelled conversations (no pytest, no model).

The ``logprobs`` judge turns the expected score E = 1 p(1) + 2 p(2) + 3 p(3) into a score with two cut-points
(``judge.logprob_score``: 1 below LOW, 3 from HIGH on, else 2). A small model's E lies in a narrow band
(SmolLM2-135M: 1.05-1.20), so the scale's 1.5 and 2.5 score everything 1; ``fit_cutpoints`` finds the pair that
agrees with people most often on a calibration set's tuning half, subject to a ceiling on false passes (a
conversation a person scored below the minimum score that the cut-points pass), since for a test tool a false
green is worse than a false red. ``calibration/fit_cutpoints.py`` runs it over a calibration run's export
(``--llmsim-results``: ``calibration.cases[].probabilities.expected``).

Candidates are the midpoints between neighbouring distinct expected scores, and 1 and 3 (no case below LOW, or
none from HIGH on when no case reaches 3), so every distinct split of the cases is tried once. Ties go to fewer
false passes, then the smaller mean absolute error, then the stricter pair (higher LOW, then higher HIGH: when
two pairs do equally well, the one that passes fewer conversations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

LOWEST, HIGHEST = 1.0, 3.0


@dataclass(frozen=True)
class Case:
    """One labelled conversation: the judge's expected score and the score a person gave."""

    expected: float
    human: int


@dataclass(frozen=True)
class CutFit:
    """Cut-points and what they give on the cases they are applied to."""

    thresholds: tuple[float, float]
    matches: int
    total: int
    false_passes: int
    should_fail: int
    absolute_error: int
    confusion: dict[int, dict[int, int]]

    @property
    def accuracy(self) -> float:
        return self.matches / self.total if self.total else 0.0

    @property
    def false_pass_rate(self) -> float:
        return self.false_passes / self.should_fail if self.should_fail else 0.0

    @property
    def mean_absolute_error(self) -> float:
        return self.absolute_error / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "matches": self.matches, "total": self.total,
                "accuracy": round(self.accuracy, 4), "false_passes": self.false_passes,
                "should_fail": self.should_fail, "false_pass_rate": round(self.false_pass_rate, 4),
                "mean_absolute_error": round(self.mean_absolute_error, 4),
                "confusion": {str(h): {str(j): n for j, n in row.items()} for h, row in self.confusion.items()}}


def cut(expected: float, thresholds: tuple[float, float]) -> int:
    """The score of ``expected`` under ``thresholds`` (as ``judge.logprob_score``)."""
    return 1 if expected < thresholds[0] else 3 if expected >= thresholds[1] else 2


def apply_cutpoints(cases: Sequence[Case], thresholds: tuple[float, float], min_score: int = 2) -> CutFit:
    """What ``thresholds`` give on ``cases``: agreement, false passes (a person's score below ``min_score``, the
    cut's at or above it), absolute error and the confusion table (human rows, judge columns)."""
    return _tally([(cut(case.expected, thresholds), case.human) for case in cases], thresholds, min_score)


def _tally(scored: Sequence[tuple[int, int]], thresholds: tuple[float, float], min_score: int) -> CutFit:
    """The figures of (judge score, human score) pairs."""
    confusion = {h: {j: 0 for j in (1, 2, 3)} for h in (1, 2, 3)}
    matches = false_passes = should_fail = error = 0
    for score, human in scored:
        confusion[human][score] += 1
        matches += score == human
        error += abs(score - human)
        if human < min_score:
            should_fail += 1
            false_passes += score >= min_score
    return CutFit(thresholds, matches, len(scored), false_passes, should_fail, error, confusion)


def candidate_cuts(values: Sequence[float]) -> list[float]:
    """1, 3 and the midpoints between neighbouring distinct ``values``: one cut per distinct split."""
    distinct = sorted(set(values))
    middles = [(a + b) / 2 for a, b in pairwise(distinct)]
    return sorted({LOWEST, HIGHEST, *middles})


def fit_cutpoints(cases: Sequence[Case], *, min_score: int = 2, max_false_pass_rate: float = 0.1) -> CutFit:
    """The cut-points that agree with the people on ``cases`` most often while passing at most
    ``max_false_pass_rate`` of the conversations they scored below ``min_score`` (ties: fewer false passes, smaller
    error, then the stricter pair). ValueError for no cases, a score outside 1-3, an expected score that is not a
    number from 1 to 3, or when no pair meets the ceiling (never: LOW = HIGH = 3 passes nothing below 3)."""
    if not cases:
        raise ValueError("no cases to fit cut-points on")
    for case in cases:
        if case.human not in (1, 2, 3):
            raise ValueError(f"a human score must be 1, 2 or 3 (got {case.human!r})")
        if not (math.isfinite(case.expected) and LOWEST - 1e-9 <= case.expected <= HIGHEST + 1e-9):
            raise ValueError(f"an expected score must be a number from 1 to 3 (got {case.expected!r})")
    candidates = candidate_cuts([case.expected for case in cases])
    best: CutFit | None = None
    best_key: tuple[float, ...] = ()
    for i, low in enumerate(candidates):
        for high in candidates[i:]:
            fit = apply_cutpoints(cases, (low, high), min_score)
            if fit.false_passes > max_false_pass_rate * fit.should_fail + 1e-9:
                continue
            key = (fit.matches, -fit.false_passes, -fit.absolute_error, low, high)
            if best is None or key > best_key:
                best, best_key = fit, key
    if best is None:
        raise ValueError(f"no cut-points pass at most {max_false_pass_rate:.0%} of the conversations scored below "
                         f"{min_score}")
    return best


def leave_one_out(cases: Sequence[Case], *, min_score: int = 2, max_false_pass_rate: float = 0.1) -> CutFit:
    """An estimate of how the fit does on cases it was not fitted on: each case scored by the cut-points fitted on
    all the others (the thresholds reported are the full fit's). Read it before measuring a held-out set."""
    scored = []
    for index, case in enumerate(cases):
        rest = [other for position, other in enumerate(cases) if position != index]
        fit = fit_cutpoints(rest, min_score=min_score, max_false_pass_rate=max_false_pass_rate)
        scored.append((cut(case.expected, fit.thresholds), case.human))
    full = fit_cutpoints(cases, min_score=min_score, max_false_pass_rate=max_false_pass_rate)
    return _tally(scored, full.thresholds, min_score)


def cases_from_export(data: dict[str, Any]) -> list[Case]:
    """The cases of a calibration run's export (``--llmsim-results``: ``calibration.cases``) with the ``logprobs``
    judge's expected score. ValueError naming what is missing: no calibration object, a case without
    probabilities (another judge method, or a judge error)."""
    calibration = data.get("calibration") if isinstance(data, dict) else None
    if not isinstance(calibration, dict) or not isinstance(calibration.get("cases"), list):
        raise ValueError("the export has no 'calibration' object with 'cases' (run with --llmsim-calibrate DIR "
                         "--llmsim-results FILE)")
    cases = []
    for entry in calibration["cases"]:
        probabilities = entry.get("probabilities") if isinstance(entry, dict) else None
        if not isinstance(probabilities, dict) or not isinstance(probabilities.get("expected"), int | float):
            name = entry.get("file") if isinstance(entry, dict) else entry
            raise ValueError(f"case {name!r} has no expected score (judge the set with --llmsim-judge-method "
                             "logprobs; a judge error has none either)")
        cases.append(Case(float(probabilities["expected"]), int(entry["human_score"])))
    return cases

