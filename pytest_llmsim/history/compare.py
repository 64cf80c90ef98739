"""Two runs compared with statistics: is a difference real or noise? (no pytest)

Runs are paired by scenario (the same scenario is easier or harder on both sides), each scenario with its trials
(``model.trials.scenario_groups``: a combined record's trials, trial items gathered, one conversation = one trial).
Only scenarios that count in both runs (passed, failed, error, xpassed) are compared.

For the suite (``RunComparison.suite``), two figures, each with both sides, the difference, a 95% interval and a
p-value:

* **pass rate**: each scenario's share of passing trials, averaged over the scenarios;
* **mean score**: each scenario's mean trial score, averaged over the scenarios scored on both sides.

The p-value is the paired sign-flip permutation test on the per-scenario differences (exact while cheap; with one
trial per scenario this is McNemar's exact test); the interval a paired bootstrap percentile interval.

Per scenario (``RunComparison.scenarios``): the pass counts in a 2x2 table, Fisher's exact test, the difference of
pass rates with Newcombe's interval; p-values adjusted over the scenarios by Benjamini-Hochberg (false discovery
rate). With few trials a single scenario is rarely significant (5/5 -> 2/5 has p = 0.17): said, not hidden.

The gate (``significant_regressions``) fires only on a *drop*: a suite figure whose Holm-adjusted p (over the two
figures) is below alpha, or a scenario whose BH-adjusted p is below alpha. A verdict that flips with no change to
the agent (same commit, clean tree) is noise: such scenarios are ``noisy`` (``noisy_scenarios`` over a history).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from pytest_llmsim.history.statistics import (
    BOOTSTRAP_MAX_PAIRS,
    BOOTSTRAP_RESAMPLES,
    benjamini_hochberg,
    bootstrap_interval,
    fisher_exact,
    holm,
    newcombe_interval,
    sign_flip_test,
)
from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.model.trials import scenario_groups

DEFAULT_ALPHA = 0.05
GATE_OPTION = "llmsim_fail_on_significant_regression"
PER_SCENARIO_METHOD = "Fisher's exact test on pass counts, Benjamini-Hochberg adjusted over the scenarios"
INTERVAL_METHOD = (f"paired bootstrap percentile interval ({BOOTSTRAP_RESAMPLES} resamples; normal approximation "
                   f"above {BOOTSTRAP_MAX_PAIRS} pairs)")
NAMED = 10


@dataclass(frozen=True)
class Side:
    """One scenario in one run: passing trials of the trials that count, and the scored trials' scores."""

    passed: int
    trials: int
    scores: tuple[int, ...] = ()

    @property
    def pass_rate(self) -> Fraction:
        return Fraction(self.passed, self.trials) if self.trials else Fraction(0)

    @property
    def mean_score(self) -> Fraction | None:
        return Fraction(sum(self.scores), len(self.scores)) if self.scores else None


@dataclass(frozen=True)
class ScenarioComparison:
    """One scenario in both runs (``old`` None: new in the candidate; ``new`` None: missing from it)."""

    nodeid: str
    scenario: str
    old: Side | None
    new: Side | None
    p_value: float | None = None  # Fisher's exact test on the pass counts
    p_adjusted: float | None = None  # Benjamini-Hochberg over the compared scenarios
    interval: tuple[float, float] | None = None  # of the pass-rate difference (Newcombe)
    significant: bool = False
    noisy: bool = False  # its verdict flips with no change to the agent

    @property
    def paired(self) -> bool:
        return self.old is not None and self.new is not None

    @property
    def pass_rate_delta(self) -> float | None:
        if self.old is None or self.new is None:
            return None
        return float(self.new.pass_rate - self.old.pass_rate)

    @property
    def score_delta(self) -> float | None:
        if self.old is None or self.new is None or self.old.mean_score is None or self.new.mean_score is None:
            return None
        return float(self.new.mean_score - self.old.mean_score)

    @property
    def dropped(self) -> bool:
        """Significantly fewer passing trials."""
        return self.significant and (self.pass_rate_delta or 0) < 0

    @property
    def flipped(self) -> bool:
        """The scenario's verdict (all trials passed or not) differs between the runs."""
        if self.old is None or self.new is None:
            return False
        return (self.old.passed == self.old.trials) != (self.new.passed == self.new.trials)

    def to_dict(self) -> dict[str, Any]:
        def side(value: Side | None) -> dict[str, Any] | None:
            if value is None:
                return None
            mean = value.mean_score
            return {"passed": value.passed, "trials": value.trials, "pass_rate": round(float(value.pass_rate), 4),
                    "mean_score": None if mean is None else round(float(mean), 4)}

        return {"nodeid": self.nodeid, "scenario": self.scenario, "baseline": side(self.old),
                "candidate": side(self.new), "pass_rate_delta": _round(self.pass_rate_delta),
                "interval": None if self.interval is None else [round(v, 4) for v in self.interval],
                "score_delta": _round(self.score_delta), "p_value": _round(self.p_value, 6),
                "p_adjusted": _round(self.p_adjusted, 6), "significant": self.significant, "noisy": self.noisy}


@dataclass(frozen=True)
class SuiteFigure:
    """A suite figure on both sides over the paired scenarios, the difference, its interval and the test."""

    name: str  # "pass rate" | "mean score"
    old: float | None
    new: float | None
    delta: float | None
    interval: tuple[float, float] | None
    p_value: float | None
    p_adjusted: float | None  # Holm over the suite figures
    method: str
    scenarios: int  # pairs the figure is computed over
    significant: bool = False

    @property
    def dropped(self) -> bool:
        return self.significant and (self.delta or 0) < 0

    def text(self) -> str:
        """``pass rate 0.82 -> 0.71 (-0.11, 95% interval -0.19 to -0.03), exact sign-flip permutation test p =
        0.008 over 40 scenarios``."""
        if self.old is None or self.new is None or self.delta is None:
            return f"{self.name}: not compared (no scenario on both sides)"
        interval = "" if self.interval is None else \
            f", 95% interval {self.interval[0]:+.3f} to {self.interval[1]:+.3f}"
        p = "" if self.p_value is None else f", {self.method} p = {format_p(self.p_value)}"
        return (f"{self.name} {self.old:.3f} -> {self.new:.3f} ({self.delta:+.3f}{interval}){p} over "
                f"{self.scenarios} scenario{'' if self.scenarios == 1 else 's'}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "baseline": _round(self.old), "candidate": _round(self.new),
                "delta": _round(self.delta),
                "interval": None if self.interval is None else [round(v, 4) for v in self.interval],
                "interval_method": INTERVAL_METHOD, "p_value": _round(self.p_value, 6),
                "p_adjusted": _round(self.p_adjusted, 6), "method": self.method, "scenarios": self.scenarios,
                "significant": self.significant}


@dataclass(frozen=True)
class RunComparison:
    alpha: float
    suite: list[SuiteFigure]
    scenarios: list[ScenarioComparison]
    old_label: str = "baseline"
    new_label: str = "candidate"
    same_agent: bool = False  # both runs of one commit with a clean tree: every flip is noise
    notes: list[str] = field(default_factory=list)

    @property
    def paired(self) -> list[ScenarioComparison]:
        return [s for s in self.scenarios if s.paired]

    @property
    def significant(self) -> list[ScenarioComparison]:
        return [s for s in self.scenarios if s.significant]

    @property
    def noisy(self) -> list[ScenarioComparison]:
        return [s for s in self.scenarios if s.noisy]

    def figure(self, name: str) -> SuiteFigure:
        return next(f for f in self.suite if f.name == name)

    def marks(self) -> dict[str, str]:
        """What a report adds to a changed scenario's row: a significant change, noise."""
        marks = {}
        for s in self.scenarios:
            parts = []
            if s.significant:
                parts.append(f"significant {'drop' if s.dropped else 'rise'}, adjusted p = "
                             f"{format_p(s.p_adjusted or 0)}")
            if s.noisy:
                parts.append("noisy: flips with no change to the agent")
            if parts:
                marks[s.nodeid] = "; ".join(parts)
        return marks

    def statistics_line(self) -> str:
        """The one line a pull-request summary shows: ``pass rate 0.82 -> 0.71 (-0.11, 95% interval -0.19 to -0.03,
        p = 0.008, significant); mean score ...; paired exact sign-flip permutation test over 40 scenarios; 2
        scenarios significantly worse (Fisher, Benjamini-Hochberg)``."""
        parts = []
        for figure in self.suite:
            if figure.delta is None or figure.old is None or figure.new is None:
                continue
            interval = "" if figure.interval is None else \
                f", 95% interval {figure.interval[0]:+.2f} to {figure.interval[1]:+.2f}"
            verdict = ", significant" if figure.significant else ""
            parts.append(f"{figure.name} {figure.old:.2f} -> {figure.new:.2f} ({figure.delta:+.2f}{interval}, "
                         f"p = {format_p(figure.p_value if figure.p_value is not None else 1)}{verdict})")
        if not parts:
            return "no scenario ran in both runs"
        methods = sorted({f.method for f in self.suite if f.method})
        worse = sum(1 for s in self.significant if s.dropped)
        better = len(self.significant) - worse
        line = (f"{'; '.join(parts)}; paired {' / '.join(methods)} over {self.suite[0].scenarios} scenarios, "
                f"alpha {self.alpha:g}; per scenario (Fisher, Benjamini-Hochberg): {worse} significantly worse, "
                f"{better} better")
        return line + (f"; {len(self.noisy)} noisy" if self.noisy else "")

    def lines(self, *, every: bool = False) -> list[str]:
        """The comparison as text: the suite figures, then the scenarios that changed (``every``: all)."""
        out = [f"{self.old_label} -> {self.new_label}: {len(self.paired)} scenario(s) in both runs",
               *(("  " + f.text() + (" SIGNIFICANT" if f.significant else "")) for f in self.suite),
               f"  per scenario: {PER_SCENARIO_METHOD}; significant: adjusted p < {self.alpha:g}"]
        shown = [s for s in self.scenarios if every or s.significant or s.noisy or not s.paired
                 or (s.pass_rate_delta or 0) != 0 or (s.score_delta or 0) != 0]
        for s in shown:
            out.append("  " + scenario_text(s))
        out += [f"  note: {note}" for note in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "baseline": self.old_label, "candidate": self.new_label,
                "same_agent": self.same_agent, "suite": [f.to_dict() for f in self.suite],
                "per_scenario_method": PER_SCENARIO_METHOD,
                "scenarios": [s.to_dict() for s in self.scenarios], "notes": list(self.notes)}


def format_p(p: float) -> str:
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}".rstrip("0").rstrip(".") if p < 1 else "1"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rate_text(side: Side | None) -> str:
    return "-" if side is None else f"{side.passed}/{side.trials}"


def scenario_text(s: ScenarioComparison) -> str:
    """``a.yaml::x: passed 5/5 -> 2/5 (-0.60, 95% interval -0.86 to -0.07), score -1.2, Fisher p = 0.17,
    adjusted 0.5``."""
    if s.old is None:
        return f"{s.nodeid}: new ({_rate_text(s.new)} passed)"
    if s.new is None:
        return f"{s.nodeid}: missing from {('the candidate')} (was {_rate_text(s.old)} passed)"
    parts = [f"{s.nodeid}: passed {_rate_text(s.old)} -> {_rate_text(s.new)}"]
    if s.pass_rate_delta is not None and s.interval is not None:
        parts[0] += f" ({s.pass_rate_delta:+.2f}, 95% interval {s.interval[0]:+.2f} to {s.interval[1]:+.2f})"
    if s.score_delta is not None:
        parts.append(f"score {s.score_delta:+.2f}")
    if s.p_value is not None and s.p_adjusted is not None:
        parts.append(f"Fisher p = {format_p(s.p_value)}, adjusted {format_p(s.p_adjusted)}")
    if s.significant:
        parts.append("SIGNIFICANT " + ("drop" if s.dropped else "rise"))
    if s.noisy:
        parts.append("noisy (its verdict flips with no change to the agent)")
    return ", ".join(parts)


# -- computing ----------------------------------------------------------------------------------------------------
def sides(records: Iterable[ScenarioRecord]) -> dict[str, tuple[str, Side]]:
    """Each counted scenario of a run: node id -> (name, its trials)."""
    return {group.nodeid: (group.scenario, Side(group.stats.passed, group.stats.trials, group.stats.scores))
            for group in scenario_groups(records) if group.stats.trials}


def compare_runs(old: Iterable[ScenarioRecord], new: Iterable[ScenarioRecord], *, alpha: float = DEFAULT_ALPHA,
                 noisy: Iterable[str] = (), same_agent: bool = False, old_label: str = "baseline",
                 new_label: str = "candidate", interval: bool = True) -> RunComparison:
    """``new`` compared with ``old`` (see the module docstring). ``noisy``: node ids known to flip with no change;
    ``same_agent``: both runs ran the same agent, so any flip is noise. ``interval=False`` skips the bootstrap
    (a gate needs only the tests)."""
    return compare_sides(sides(old), sides(new), alpha=alpha, noisy=noisy, same_agent=same_agent,
                         old_label=old_label, new_label=new_label, interval=interval)


def compare_sides(old: Mapping[str, tuple[str, Side]], new: Mapping[str, tuple[str, Side]], *,
                  alpha: float = DEFAULT_ALPHA, noisy: Iterable[str] = (), same_agent: bool = False,
                  old_label: str = "baseline", new_label: str = "candidate", interval: bool = True
                  ) -> RunComparison:
    known_noisy = set(noisy)
    order = [*new, *(nodeid for nodeid in old if nodeid not in new)]
    pairs = [(nodeid, old[nodeid][1], new[nodeid][1]) for nodeid in new if nodeid in old]
    fisher = [fisher_exact(o.passed, o.trials - o.passed, n.passed, n.trials - n.passed) for _, o, n in pairs]
    adjusted = dict(zip((nodeid for nodeid, _, _ in pairs), benjamini_hochberg(fisher), strict=True))
    raw = dict(zip((nodeid for nodeid, _, _ in pairs), fisher, strict=True))
    scenarios = []
    for nodeid in order:
        name, old_side = old.get(nodeid, ("", None))
        new_name, new_side = new.get(nodeid, (name, None))
        if old_side is None or new_side is None:
            scenarios.append(ScenarioComparison(nodeid, new_name or name, old_side, new_side))
            continue
        flip = (old_side.passed == old_side.trials) != (new_side.passed == new_side.trials)
        scenarios.append(ScenarioComparison(
            nodeid, new_name, old_side, new_side, p_value=raw[nodeid], p_adjusted=adjusted[nodeid],
            interval=newcombe_interval(old_side.passed, old_side.trials, new_side.passed, new_side.trials),
            significant=adjusted[nodeid] < alpha and old_side.pass_rate != new_side.pass_rate,
            noisy=flip and (same_agent or nodeid in known_noisy)))
    suite = _suite_figures(pairs, alpha, interval)
    notes = []
    if pairs and max(max(o.trials, n.trials) for _, o, n in pairs) < 2:
        notes.append("one trial per scenario: a single scenario's change is never significant on its own "
                     "(run with --llmsim-trials to test scenarios one by one)")
    return RunComparison(alpha, suite, scenarios, old_label, new_label, same_agent, notes)


def _suite_figures(pairs: Sequence[tuple[str, Side, Side]], alpha: float, interval: bool) -> list[SuiteFigure]:
    rates = [(o.pass_rate, n.pass_rate) for _, o, n in pairs]
    scores = [(o.mean_score, n.mean_score) for _, o, n in pairs
              if o.mean_score is not None and n.mean_score is not None]
    figures = []
    for name, values in (("pass rate", rates), ("mean score", scores)):
        if not values:
            figures.append(SuiteFigure(name, None, None, None, None, None, None, "", 0))
            continue
        differences = [n - o for o, n in values]
        test = sign_flip_test(differences)
        count = len(values)
        figures.append(SuiteFigure(
            name, float(sum(o for o, _ in values)) / count, float(sum(n for _, n in values)) / count,
            float(sum(differences)) / count,
            bootstrap_interval([float(d) for d in differences]) if interval else None,
            test.p_value, None, test.method, count))
    tested = [i for i, f in enumerate(figures) if f.p_value is not None]
    adjusted = holm([figures[i].p_value for i in tested])  # type: ignore[misc]  # tested: not None
    for i, p in zip(tested, adjusted, strict=True):
        figure = figures[i]
        figures[i] = SuiteFigure(figure.name, figure.old, figure.new, figure.delta, figure.interval, figure.p_value,
                                 p, figure.method, figure.scenarios,
                                 significant=p < alpha and (figure.delta or 0) != 0)
    return figures


def significant_regressions(comparison: RunComparison) -> list[str]:
    """One line per significant drop (a suite figure, then the scenarios): the gate
    ``llmsim_fail_on_significant_regression``. Rises and changes that are not significant never fail; two runs
    that share no scenario fail it (nothing was compared, so no drop was ruled out)."""
    if not comparison.paired:
        return [f"no scenario ran in both {comparison.old_label} and {comparison.new_label}: nothing was compared, so "
                f"a significant drop cannot be ruled out ({GATE_OPTION})"]
    missed = []
    for figure in comparison.suite:
        if figure.dropped:
            missed.append(f"{figure.text()}, Holm-adjusted over {len(comparison.suite)} suite figures p = "
                          f"{format_p(figure.p_adjusted or 0)} < {comparison.alpha:g}: a significant drop since "
                          f"the baseline ({GATE_OPTION})")
    drops = [s for s in comparison.scenarios if s.dropped]
    if drops:
        named = "; ".join(scenario_text(s) for s in drops[:NAMED])
        more = f" and {len(drops) - NAMED} more" if len(drops) > NAMED else ""
        missed.append(f"{len(drops)} scenario(s) significantly worse since the baseline ({PER_SCENARIO_METHOD}, "
                      f"alpha {comparison.alpha:g}): {named}{more} ({GATE_OPTION})")
    return missed


# -- over a history -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunVerdicts:
    """One run of a history as flakiness needs it: when, which agent, each scenario's verdict (passed or not)."""

    run_id: str
    created_at: str
    commit: str | None
    clean: bool  # no uncommitted change to tracked files: the commit is the agent
    settings_key: str  # the settings that change verdicts, as one string
    verdicts: Mapping[str, bool]


def noisy_scenarios(runs: Sequence[RunVerdicts]) -> set[str]:
    """Scenarios whose verdict differs between runs of one clean commit with the same verdict settings: the agent
    did not change, so the flip is noise (judge or simulator sampling)."""
    groups: dict[tuple[str, str], dict[str, set[bool]]] = {}
    for run in runs:
        if run.commit is None or not run.clean:
            continue
        seen = groups.setdefault((run.commit, run.settings_key), {})
        for nodeid, passed in run.verdicts.items():
            seen.setdefault(nodeid, set()).add(passed)
    return {nodeid for seen in groups.values() for nodeid, values in seen.items() if len(values) > 1}


@dataclass(frozen=True)
class Flakiness:
    """A scenario over the last runs of a history (oldest first)."""

    nodeid: str
    runs: int
    passed: int
    flips: int  # verdict changes between consecutive runs
    failing_since: str | None  # the first run of the current failing streak (None: passing in the last run)
    failing_since_at: str | None = None
    noisy: bool = False

    @property
    def pass_rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    def text(self) -> str:
        since = f", failing since run {self.failing_since[:8]} ({self.failing_since_at})" \
            if self.failing_since is not None else ""
        noisy = ", noisy (flips with no change to the agent)" if self.noisy else ""
        return (f"{self.nodeid}: passed {self.passed} of the last {self.runs} runs ({self.pass_rate:.0%}), "
                f"{self.flips} flip(s){since}{noisy}")

    def to_dict(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "runs": self.runs, "passed": self.passed,
                "pass_rate": round(self.pass_rate, 4), "flips": self.flips, "failing_since": self.failing_since,
                "failing_since_at": self.failing_since_at, "noisy": self.noisy}


def flakiness(runs: Sequence[RunVerdicts], *, last: int = 20) -> list[Flakiness]:
    """Each scenario's pass rate over the last ``last`` runs it ran in (``runs`` oldest first), its flips, and the
    run where its current failing streak started; flaky ones (some flip) first, then the rest, by node id."""
    noisy = noisy_scenarios(runs)
    history: dict[str, list[tuple[RunVerdicts, bool]]] = {}
    for run in runs:
        for nodeid, passed in run.verdicts.items():
            history.setdefault(nodeid, []).append((run, passed))
    out = []
    for nodeid, seen in history.items():
        seen = seen[-last:]
        flips = sum(1 for (_, a), (_, b) in itertools.pairwise(seen) if a != b)
        since: RunVerdicts | None = None
        for run, passed in reversed(seen):
            if passed:
                break
            since = run
        out.append(Flakiness(nodeid, len(seen), sum(1 for _, p in seen if p), flips,
                             since.run_id if since is not None else None,
                             since.created_at if since is not None else None, nodeid in noisy))
    return sorted(out, key=lambda f: (f.flips == 0 and f.failing_since is None, f.nodeid))


def verdicts_of(records: Iterable[ScenarioRecord]) -> dict[str, bool]:
    """Each counted scenario's verdict: every counted trial passed."""
    return {nodeid: side.passed == side.trials for nodeid, (_, side) in sides(records).items()}


def mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None
