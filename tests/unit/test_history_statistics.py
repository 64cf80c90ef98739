"""The history's statistics: every function checked against scipy on fixed data, and the significance gate checked
by simulation where the truth is known (a noisy judge and no change; a real drop)."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from pytest_llmsim.history.compare import Side, compare_runs, compare_sides, significant_regressions
from pytest_llmsim.history.statistics import (
    benjamini_hochberg,
    bootstrap_interval,
    fisher_exact,
    holm,
    newcombe_interval,
    sign_flip_test,
    wilson_interval,
)
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status

scipy_stats = pytest.importorskip("scipy.stats")
np = pytest.importorskip("numpy")

TABLES = [(5, 0, 2, 3), (0, 5, 5, 0), (3, 2, 3, 2), (10, 0, 4, 6), (1, 9, 8, 2), (7, 3, 0, 10), (2, 8, 2, 8),
          (4, 1, 0, 0), (12, 3, 5, 14)]


@pytest.mark.parametrize("table", TABLES)
def test_fisher_exact_matches_scipy(table: tuple[int, int, int, int]) -> None:
    a, b, c, d = table
    expected = scipy_stats.fisher_exact([[a, b], [c, d]]).pvalue
    assert fisher_exact(a, b, c, d) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_five_of_five_to_two_of_five_is_not_significant_with_fisher() -> None:
    assert fisher_exact(5, 0, 2, 3) == pytest.approx(0.1667, abs=1e-3)


@pytest.mark.parametrize("passed, trials", [(0, 5), (5, 5), (2, 5), (1, 1), (37, 40), (0, 1), (13, 100)])
def test_wilson_interval_matches_scipy(passed: int, trials: int) -> None:
    expected = scipy_stats.binomtest(passed, trials).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(passed, trials)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert 0 <= low <= passed / trials <= high <= 1


def test_newcombe_interval_by_its_definition_and_a_published_value() -> None:
    # Newcombe (1998), table II, example (a): 56/70 vs 48/80 -> difference 0.2, method 10 interval 0.0524 to 0.3339.
    low, high = newcombe_interval(48, 80, 56, 70)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    low, high = newcombe_interval(5, 5, 2, 5)
    assert -1 <= low < -0.6 < high <= 1


@pytest.mark.parametrize("differences", [
    [1, -1, 2, 0, 3, 1, 1],
    [0.2, -0.4, 0.6, 0.6, 0.8, 0.0, 0.2, -0.2, 0.4],
    [-1, -1, -1, -1, 1, -1, -1, 0, -1, -1, -1],
    [Fraction(1, 3), Fraction(-2, 3), 1, Fraction(1, 3), Fraction(2, 3), 0, -1, 1],
])
def test_exact_sign_flip_matches_scipy_permutation_test(differences: list[float]) -> None:
    values = np.array([float(d) for d in differences])
    expected = scipy_stats.permutation_test((values,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                            alternative="two-sided").pvalue
    result = sign_flip_test(differences)
    assert result.method == "exact sign-flip permutation test"
    assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_sign_flip_on_binary_pairs_is_mcnemars_exact_test() -> None:
    differences = [1] * 3 + [-1] * 12 + [0] * 25  # 3 pairs improved, 12 worsened, 25 unchanged
    expected = scipy_stats.binomtest(3, 15, 0.5).pvalue
    assert sign_flip_test(differences).p_value == pytest.approx(expected, rel=1e-9)


def test_sign_flip_falls_back_to_the_normal_approximation_for_big_suites() -> None:
    rng = random.Random(6)  # p near 0.1: where an approximation would show
    differences = [rng.choice((-1, 0, 1)) * rng.randint(1, 40) for _ in range(600)]
    result = sign_flip_test(differences)
    assert "normal approximation" in result.method
    values = np.array(differences, dtype=float)
    expected = scipy_stats.permutation_test((values,), np.mean, permutation_type="samples", n_resamples=4000,
                                            alternative="two-sided", rng=1).pvalue
    assert result.p_value == pytest.approx(expected, abs=0.03)


def test_no_difference_is_p_one() -> None:
    assert sign_flip_test([0, 0, 0]).p_value == 1.0


def test_bootstrap_interval_agrees_with_scipy() -> None:
    rng = random.Random(5)
    differences = [rng.choice((-0.4, -0.2, 0.0, 0.0, 0.2)) for _ in range(40)]
    expected = scipy_stats.bootstrap((np.array(differences),), np.mean, method="percentile", n_resamples=20000,
                                     rng=2).confidence_interval
    low, high = bootstrap_interval(differences)  # type: ignore[misc]
    assert low == pytest.approx(expected.low, abs=0.015)
    assert high == pytest.approx(expected.high, abs=0.015)
    assert bootstrap_interval([0.5]) is None


def test_over_the_bootstrap_limit_the_interval_is_the_normal_one_in_linear_time() -> None:
    """2000 resamples of a million pairs took hours (``llmsim compare`` of two 10^6-record exports never ended)."""
    differences = [1.0] * 6_000 + [0.0] * 14_000  # mean 0.3, population deviation sqrt(0.21)
    low, high = bootstrap_interval(differences)  # type: ignore[misc]
    half = 1.959963984540054 * math.sqrt(0.21 / 20_000)
    assert low == pytest.approx(0.3 - half, abs=1e-12) and high == pytest.approx(0.3 + half, abs=1e-12)


@pytest.mark.parametrize("p_values", [[0.01, 0.04, 0.03, 0.2, 0.5, 0.001], [0.9], [0.02, 0.02, 0.02], []])
def test_benjamini_hochberg_matches_scipy(p_values: list[float]) -> None:
    expected = scipy_stats.false_discovery_control(p_values, method="bh") if p_values else []
    assert benjamini_hochberg(p_values) == pytest.approx(list(expected))


def test_holm_by_its_definition() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.01]) == pytest.approx([0.6, 0.02])


# -- comparisons --------------------------------------------------------------------------------------------------
def _record(nodeid: str, statuses: list[str], scores: list[int]) -> ScenarioRecord:
    trials = [{"scenario": nodeid, "nodeid": nodeid, "source": "s.yaml", "status": status, "min_score": 2,
               "score": score, "trial": n} for n, (status, score) in enumerate(zip(statuses, scores, strict=True), 1)]
    passed = all(s == "passed" for s in statuses)
    result = ScenarioResult(scenario=nodeid, nodeid=nodeid, source="s.yaml",
                            status=Status.PASSED if passed else Status.FAILED, min_score=2, score=scores[0],
                            trials=trials)
    return ScenarioRecord(result=result, outcome=Outcome.PASSED if passed else Outcome.FAILED)


def test_a_comparison_of_records_names_its_methods_and_flags_a_significant_drop() -> None:
    old = [_record(f"s.yaml::{i}", ["passed"] * 10, [3] * 10) for i in range(12)]
    new = [_record(f"s.yaml::{i}", ["passed"] * 10, [3] * 10) for i in range(11)]
    new.append(_record("s.yaml::11", ["failed"] * 9 + ["passed"], [1] * 9 + [3]))
    comparison = compare_runs(old, new)
    worst = comparison.scenarios[-1]
    assert worst.significant and worst.dropped
    assert worst.p_value == pytest.approx(scipy_stats.fisher_exact([[10, 0], [1, 9]]).pvalue)
    assert all(not s.significant for s in comparison.scenarios[:-1])
    rate = comparison.figure("pass rate")
    assert rate.old == 1.0 and rate.new == pytest.approx(1 - 0.9 / 12)
    assert rate.method == "exact sign-flip permutation test" and not rate.significant  # one scenario of 12 moved
    lines = significant_regressions(comparison)
    assert len(lines) == 1 and "s.yaml::11" in lines[0] and "Fisher" in lines[0]
    assert "per scenario (Fisher, Benjamini-Hochberg): 1 significantly worse, 0 better" in comparison.statistics_line()


def test_same_agent_flips_are_noisy_and_a_rise_never_fails_the_gate() -> None:
    old = [_record(f"s.yaml::{i}", ["failed"] * 10, [1] * 10) for i in range(30)]
    new = [_record(f"s.yaml::{i}", ["passed"] * 10, [3] * 10) for i in range(30)]
    comparison = compare_runs(old, new, same_agent=True)
    assert comparison.figure("pass rate").significant
    assert significant_regressions(comparison) == []
    assert len(comparison.noisy) == 30


# -- simulation: the gate's false alarms and power, where the truth is known -----------------------------------
def _simulated_run(rng: random.Random, pass_probabilities: list[float], trials: int, noise: float
                   ) -> dict[str, tuple[str, Side]]:
    """A run drawn from a known model: scenario i passes a trial with probability p_i; with probability ``noise``
    the judge's verdict is a coin flip instead (a flaky judge). Passing trials score 2 or 3, failing ones 1."""
    run = {}
    for index, p in enumerate(pass_probabilities):
        outcomes = []
        for _ in range(trials):
            passed = rng.random() < p
            if rng.random() < noise:
                passed = rng.random() < 0.5
            outcomes.append(passed)
        scores = tuple(rng.choice((2, 3)) if passed else 1 for passed in outcomes)
        run[f"s{index}"] = (f"s{index}", Side(sum(outcomes), trials, scores))
    return run


def test_with_a_flaky_judge_and_no_change_the_gate_fails_under_five_percent() -> None:
    rng = random.Random(20261207)
    alarms = 0
    for _ in range(200):
        truth = [rng.uniform(0.4, 1.0) for _ in range(40)]
        comparison = compare_sides(_simulated_run(rng, truth, 5, 0.5), _simulated_run(rng, truth, 5, 0.5),
                                   interval=False)
        alarms += bool(significant_regressions(comparison))
    assert alarms < 10, f"{alarms} false alarms in 200 comparisons with no change"


def test_a_real_drop_from_0_9_to_0_6_fails_the_gate_over_ninety_percent() -> None:
    rng = random.Random(7)
    fired = 0
    for _ in range(200):
        comparison = compare_sides(_simulated_run(rng, [0.9] * 40, 5, 0.0), _simulated_run(rng, [0.6] * 40, 5, 0.0),
                                   interval=False)
        fired += bool(significant_regressions(comparison))
    assert fired > 180, f"the gate fired on {fired} of 200 real drops"


def test_sign_flip_false_alarm_rate_is_at_most_alpha() -> None:
    """The suite test alone, exactly: with n pairs each differing by +-1 at random (no change), the share of sign
    patterns it calls significant at 0.05 is at most 0.05, for every n from 1 to 12."""
    for n in range(1, 13):
        patterns = list(itertools.product((-1, 1), repeat=n))
        rejected = sum(sign_flip_test(list(p)).p_value < 0.05 for p in patterns)
        assert rejected / len(patterns) <= 0.05


def test_runs_that_share_no_scenario_fail_the_gate_rather_than_pass_it_unchecked() -> None:
    old = [_record(f"s.yaml::old_{i}", ["passed"] * 3, [3] * 3) for i in range(5)]
    new = [_record(f"s.yaml::new_{i}", ["failed"] * 3, [1] * 3) for i in range(5)]
    lines = significant_regressions(compare_runs(old, new, old_label="main", new_label="this run"))
    assert lines == ["no scenario ran in both main and this run: nothing was compared, so a significant drop cannot "
                     "be ruled out (llmsim_fail_on_significant_regression)"]
    assert significant_regressions(compare_runs([], [])) != []
