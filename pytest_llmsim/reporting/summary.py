"""Run records and the run summary: pure functions over ``ScenarioRecord``s (no pytest).

A *record* (``results.ScenarioRecord``) is one scenario of a run: its result, pytest's outcome, its cost and
the run id (``make_record``). ``summarize`` turns the records into the run totals that the terminal, the HTML
report, the exports, the histogram and the gates all show; it also accepts export rows and bare
``ScenarioResult.to_dict()`` dicts, so an export alone reproduces its summary.

Conventions, fixed here so every surface agrees:

* **Scenarios are counted by pytest's outcome**, so the llmsim totals say what pytest's closing line says:
  ``successful_scenarios`` (passed), ``failed_scenarios``, ``errored_scenarios``, ``skipped_scenarios``,
  ``xfailed_scenarios`` and ``xpassed_scenarios`` add up to ``total_scenarios`` (every scenario item that
  was reported, run or skipped). An xfail-marked scenario that scores below its minimum (or errors) is
  *xfailed*, not failed; one that passes is *xpassed*, or *failed* under ``xfail_strict`` (pytest counts a
  strict XPASS as a failure). A record's ``status`` keeps the scenario's own verdict (passed/failed/error by
  score, skipped when it did not run); its ``outcome`` is pytest's.
* ``success_rate`` = (passed + xpassed) / (passed + xpassed + failed + errored): the share of the scenarios
  that count which met their minimum. Skipped and xfailed scenarios are left out (they are neither passes
  nor failures); errors count against the rate. None when no scenario counts.
* Score statistics and the distribution are over the scored scenarios that count (passed, failed and
  xpassed outcomes): an xfailed scenario's score is in its record but does not move the mean.
  ``std`` is the *population* standard deviation (``statistics.pstdev``): the run's scores are the whole
  population described, not a sample of one, and a single score has std 0.
  With trials, every trial's score counts (each conversation is one sample).
* Trials: ``conversations``, ``max_trials``, ``pass_hat_k`` (the share of the scenarios that count whose every
  trial passed; an errored trial is not a pass), ``pass_at_k`` (at least one passed) and ``flaky_scenarios``
  (``trials.scenario_groups``). One item per trial (``name[trial-n]``) or one per scenario give the same figures.
* ``failures_by_blame`` counts failed conversations (each failed trial) by ``results.blame_of``;
  ``judge_repeated``, ``judge_unanimous_share`` and ``judge_unstable_scenarios`` describe the judge's repeats.
* The cost block is what this run spent, whatever the outcome: ``total_cost_usd``, ``total_tokens`` and
  ``total_requests`` count live calls only, ``average_cost_per_request`` = total_cost_usd / total_requests.
  Calls replayed from the cache are counted apart (``replayed_requests``, ``replayed_tokens``,
  ``saved_cost_usd``); ``prompt_tokens`` and ``completion_tokens`` count every call, live or replayed, like
  the per-record fields. ``price_sources`` says where each priced model's price came from (``pricing.py``).
* A run that did not finish says so: ``interrupted`` (Ctrl-C or ``pytest.exit``) and
  ``unfinished_scenarios`` (collected scenario items that never reported: interrupted, ``-x``/``--maxfail``).
  The totals then describe only the scenarios that finished, and the suite gates are not checked.
* Values are rounded once, here: statistics and rates to 4 decimals, run costs to 6 (per-record costs to 8),
  so the terminal, HTML and exports print the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_llmsim.llm.pricing import ScenarioCost
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, blame_of, judge_details
from pytest_llmsim.model.trials import scenario_groups, scored_values

STAT_DECIMALS = 4
RUN_COST_DECIMALS = 6
RECORD_COST_DECIMALS = 8

# Flat per-record fields in export order (CSV columns); JSON/NDJSON records add ``raw_verdict``,
# ``transcript`` and ``usage``. ``session_id`` is the run's id (the same in every record of a run).
# ``tool_calls`` (the agent's tool names in call order) and ``unpriced_models`` are lists: ``;``-joined in CSV.
# ``metrics`` is the list of metric results in JSON/NDJSON, ``judge=3:passed;rules=0.5:failed`` in CSV.
# ``agents`` (who spoke, in order of first message) and ``handoffs`` (``Triage -> Billing`` each) are lists too:
# empty unless the agent is a multi-agent system. ``tags``: the scenario's tags, a list (``;``-joined in CSV).
RECORD_FIELDS = (
    "session_id", "nodeid", "scenario", "source", "status", "outcome", "score", "min_score", "comment", "metrics",
    "total_turns", "ended_by", "end_reason", "tool_calls", "duration_seconds", "prompt_tokens", "completion_tokens",
    "total_tokens", "live_calls", "cached_calls", "live_tokens", "replayed_tokens", "cached", "cost_usd",
    "saved_cost_usd", "unpriced_models", "error_kind", "error_message", "decided_by", "failure_reason", "worker",
    "blame", "judge_scores", "judge_unstable", "trial", "seed", "trials",
    "passed_trials", "failed_trials", "errored_trials", "pass_rate", "pass_hat_k", "pass_at_k", "flaky", "mean_score",
    "trial_scores", "min_pass_rate", "agents", "handoffs", "tags",
)

# Outcomes that count towards the pass rate and the score statistics, and those of them that are passes.
COUNTED_OUTCOMES = frozenset({Outcome.PASSED, Outcome.XPASSED, Outcome.FAILED, Outcome.ERROR})
PASSING_OUTCOMES = frozenset({Outcome.PASSED, Outcome.XPASSED})



def plural(count: int, word: str) -> str:
    """``1 scenario``, ``2 scenarios``, ``3000 scenarios`` (digits only, as every other count in the reports)."""
    return f"{count} {word}{'' if count == 1 else 's'}"

def make_record(result: ScenarioResult | Mapping[str, Any], cost: ScenarioCost, *, run_id: str,
                outcome: Outcome | str, worker: str = "") -> ScenarioRecord:
    """One run record from a result (or its ``to_dict()``), its cost and pytest's outcome."""
    scenario = result if isinstance(result, ScenarioResult) else ScenarioResult.from_dict(result)
    return ScenarioRecord(
        result=scenario,
        outcome=Outcome(str(outcome)),
        run_id=run_id,
        worker=worker,
        cost_usd=round(cost.spent_usd, RECORD_COST_DECIMALS),
        saved_cost_usd=round(cost.saved_usd, RECORD_COST_DECIMALS),
        unpriced_models=tuple(cost.unpriced_models),
        price_sources=dict(cost.price_sources),
    )


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
    skipped_scenarios: int = 0
    xfailed_scenarios: int = 0
    xpassed_scenarios: int = 0
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
    price_sources: dict[str, str] = field(default_factory=dict)  # priced model -> where its price came from
    interrupted: bool = False
    unfinished_scenarios: int = 0
    # Trials (``trials.py``): the conversations run (each trial one), the most trials of a scenario, the shares of
    # scenarios whose every trial passed (pass^k) and of those with at least one passing trial (pass@k), and the
    # scenarios with both (flaky). Without trials every scenario is one trial: pass^k is the pass rate.
    conversations: int = 0
    max_trials: int = 0
    pass_hat_k: float | None = None
    pass_at_k: float | None = None
    flaky_scenarios: list[str] = field(default_factory=list)
    # Failed conversations by who is to blame (``results.blame_of``: agent, customer, cut_short, unknown), and the
    # judge's agreement with itself under ``llmsim_judge_repeats``: conversations judged several times, the share
    # of them whose verdicts all gave one score, and the scenarios with a verdict straddling the minimum.
    failures_by_blame: dict[str, int] = field(default_factory=dict)
    judge_repeated: int = 0
    judge_unanimous_share: float | None = None
    judge_unstable_scenarios: list[str] = field(default_factory=list)
    # Throughput at the provider's rate limits (``rate_limits.throughput_fields``, every process of the run added
    # up): requests answered 429, seconds spent waiting for the limiter, and the live requests and tokens (usage;
    # ``reserved_tpm``: as counted against a tokens-per-minute limit, prompt estimate + max_tokens) per minute from
    # the first request sent to the last answered. None: no live request.
    rate_limited_requests: int = 0
    limiter_wait_seconds: float = 0.0
    effective_rpm: float | None = None
    effective_tpm: float | None = None
    reserved_tpm: float | None = None
    # ``llmsim_gate = regressions``: the xfailed scenarios that are known failures (failed on the baseline too, so
    # reported as xfailed: counted as any xfailed scenario is), in run order. Set by the pytest front, not from
    # the records.
    known_failures: list[str] = field(default_factory=list)
    # The judge, when it is a local model (``report_options.local_judge``): ``model`` (its GGUF file name),
    # ``bundled`` and ``calibration`` (the accuracy recorded for it, ``local_model.JUDGE_CALIBRATION``; None: never
    # measured). None: the judge is not a local model. Set by the pytest front, not from the records.
    local_judge: dict[str, Any] | None = None

    @property
    def scores_count(self) -> int:
        return sum(self.score_distribution.values())

    @property
    def passing_scenarios(self) -> int:
        """Passes that count for the pass rate: passed + xpassed."""
        return self.successful_scenarios + self.xpassed_scenarios

    @property
    def counted_scenarios(self) -> int:
        """The pass rate's denominator: passed + xpassed + failed + errored."""
        return self.passing_scenarios + self.failed_scenarios + self.errored_scenarios

    @property
    def complete(self) -> bool:
        """Every collected scenario reported and the run was not interrupted."""
        return not self.interrupted and self.unfinished_scenarios == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome_counts(summary: RunSummary) -> str:
    """``1 passed, 6 failed, 0 errored, 1 skipped, 1 xfailed``: the counts every surface prints (skipped,
    xfailed and xpassed only when there are any; ``2 xfailed (2 known failures)`` under the regressions gate)."""
    parts = [f"{summary.successful_scenarios} passed", f"{summary.failed_scenarios} failed",
             f"{summary.errored_scenarios} errored"]
    count = len(summary.known_failures)
    known = f" ({count} known failure{'' if count == 1 else 's'})" if count else ""
    for count, word in ((summary.skipped_scenarios, "skipped"), (summary.xfailed_scenarios, f"xfailed{known}"),
                        (summary.xpassed_scenarios, "xpassed")):
        if count:
            parts.append(f"{count} {word}")
    return ", ".join(parts)


def pass_rate_text(summary: RunSummary) -> str:
    return "n/a" if summary.success_rate is None else f"{summary.success_rate:.1%}"


def incomplete_text(summary: RunSummary) -> str | None:
    """How much of the run did not finish, in words; None for a complete run."""
    if summary.complete:
        return None
    finished = summary.total_scenarios
    total = finished + summary.unfinished_scenarios
    return (f"{summary.unfinished_scenarios} of {plural(total, 'scenario')} did not finish; the totals cover the "
            f"{finished} that did")


def incomplete_cause(summary: RunSummary) -> str:
    return "interrupted" if summary.interrupted else "stopped early"


def as_records(rows: Iterable[ScenarioRecord | Mapping[str, Any]]) -> list[ScenarioRecord]:
    return [row if isinstance(row, ScenarioRecord) else ScenarioRecord.from_dict(row) for row in rows]


def summarize(records: Iterable[ScenarioRecord | Mapping[str, Any]], *, interrupted: bool = False,
              unfinished: int = 0) -> RunSummary:
    """Run totals over ``records`` (one per scenario run; see the module docstring for the conventions).

    ``interrupted`` and ``unfinished`` (scenario items that never reported) mark a partial run.
    """
    rows: Sequence[ScenarioRecord] = as_records(records)
    outcomes = [r.outcome for r in rows]
    scores = scored_values(rows)
    groups = scenario_groups(rows)
    grouped = [g for g in groups if g.stats.trials]
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
    passing = sum(1 for o in outcomes if o in PASSING_OUTCOMES)
    counted = sum(1 for o in outcomes if o in COUNTED_OUTCOMES)
    results = [r.result for r in rows]
    spent = round(math.fsum(r.cost_usd for r in rows), RUN_COST_DECIMALS)
    requests = sum(r.live_calls for r in results)
    unpriced = sorted({m for r in rows for m in r.unpriced_models})
    return RunSummary(
        total_scenarios=len(rows),
        successful_scenarios=outcomes.count(Outcome.PASSED),
        failed_scenarios=outcomes.count(Outcome.FAILED),
        errored_scenarios=outcomes.count(Outcome.ERROR),
        skipped_scenarios=outcomes.count(Outcome.SKIPPED),
        xfailed_scenarios=outcomes.count(Outcome.XFAILED),
        xpassed_scenarios=outcomes.count(Outcome.XPASSED),
        success_rate=round(passing / counted, STAT_DECIMALS) if counted else None,
        score_statistics=stats,
        score_distribution=distribution,
        total_cost_usd=spent,
        total_tokens=sum(r.live_tokens for r in results),
        total_requests=requests,
        average_cost_per_request=round(spent / requests, RECORD_COST_DECIMALS) if requests else 0.0,
        saved_cost_usd=round(math.fsum(r.saved_cost_usd for r in rows), RUN_COST_DECIMALS),
        replayed_requests=sum(r.cached_calls for r in results),
        replayed_tokens=sum(r.replayed_tokens for r in results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        total_duration_seconds=round(math.fsum(float(r.duration_seconds or 0.0) for r in results), 4),
        unpriced_models=unpriced,
        price_sources=dict(sorted({m: s for r in rows for m, s in r.price_sources.items()}.items())),
        interrupted=interrupted,
        unfinished_scenarios=max(0, unfinished),
        conversations=sum(g.stats.trials for g in grouped),
        max_trials=max((g.stats.trials for g in grouped), default=0),
        pass_hat_k=round(sum(g.stats.pass_hat_k for g in grouped) / len(grouped), STAT_DECIMALS) if grouped else None,
        pass_at_k=round(sum(g.stats.pass_at_k for g in grouped) / len(grouped), STAT_DECIMALS) if grouped else None,
        flaky_scenarios=[g.nodeid for g in grouped if g.stats.flaky],
        **_verdict_quality(rows),
    )


def _verdict_quality(rows: Sequence[ScenarioRecord]) -> dict[str, Any]:
    """``failures_by_blame`` and the judge-agreement figures over every conversation of the records that count
    (each trial of a combined record)."""
    blames: dict[str, int] = {}
    repeated = unanimous = 0
    unstable: list[str] = []
    for record in rows:
        if record.outcome not in COUNTED_OUTCOMES:
            continue
        result = record.result
        conversations = result.trials or [{"status": str(result.status), "metrics": result.metrics,
                                           "transcript": result.transcript, "ended_by": result.ended_by}]
        for conversation in conversations:
            blame, _ = blame_of(conversation.get("status"), conversation.get("metrics"),
                                conversation.get("transcript"), conversation.get("ended_by"))
            if blame:
                blames[blame] = blames.get(blame, 0) + 1
            details = judge_details(conversation.get("metrics"))
            if isinstance(details.get("scores"), list) and len(details["scores"]) > 1:
                repeated += 1
                unanimous += details.get("unanimous") is True
                if details.get("unstable") is True and record.nodeid not in unstable:
                    unstable.append(record.nodeid)
    return {"failures_by_blame": dict(sorted(blames.items())), "judge_repeated": repeated,
            "judge_unanimous_share": round(unanimous / repeated, STAT_DECIMALS) if repeated else None,
            "judge_unstable_scenarios": unstable}


@dataclass(frozen=True)
class Gates:
    """Suite-level thresholds; None = not set. ``min_pass_rate`` is a fraction (0.9 = 90 %).

    ``fail_on_regression``, ``max_score_drop`` and ``significant_regression_alpha`` are the baseline gates (checked
    by ``baseline.regression_gates`` and ``history.compare.significant_regressions``, only when a baseline is given;
    ``missed_gates`` leaves them out). ``gate`` is
    ``llmsim_gate``: ``all`` (any failed item fails the run) or ``regressions`` (a known failure, one that failed
    on the baseline too, is xfailed: ``baseline.known_failure_reason``)."""

    min_mean_score: float | None = None
    min_pass_rate: float | None = None
    max_cost_usd: float | None = None
    fail_on_regression: bool = False
    max_score_drop: float | None = None
    min_pass_hat_k: float | None = None
    gate: str = "all"
    significant_regression_alpha: float | None = None

    @property
    def any(self) -> bool:
        return self.fail_on_regression or any(
            v is not None for v in (self.min_mean_score, self.min_pass_rate, self.max_cost_usd, self.max_score_drop,
                                    self.min_pass_hat_k, self.significant_regression_alpha))

    @property
    def baseline_gates(self) -> bool:
        return (self.fail_on_regression or self.max_score_drop is not None
                or self.significant_regression_alpha is not None)

    def to_dict(self) -> dict[str, float | bool | str | None]:
        return asdict(self)


def gates_unchecked_reason(summary: RunSummary) -> str | None:
    """Why the gates are not checked for this run (no scenario ran, or it did not finish); None to check."""
    if summary.total_scenarios == 0:
        return "no scenario ran"
    if not summary.complete:
        return ("the run was interrupted" if summary.interrupted else
                f"{plural(summary.unfinished_scenarios, 'scenario')} did not finish")
    return None


def missed_gates(summary: RunSummary, gates: Gates) -> list[str]:
    """One line per gate the run missed (empty when all hold, or when the gates are not checked: see
    ``gates_unchecked_reason``)."""
    if gates_unchecked_reason(summary) is not None:
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
        left_out = summary.skipped_scenarios + summary.xfailed_scenarios
        note = f"; {left_out} skipped or xfailed not counted" if left_out else ""
        missed.append(f"pass rate {summary.success_rate:.1%} ({summary.passing_scenarios} of "
                      f"{plural(summary.counted_scenarios, 'scenario')}{note}) is below the minimum "
                      f"{gates.min_pass_rate:.1%} (llmsim_min_pass_rate)")
    if gates.min_pass_hat_k is not None and summary.pass_hat_k is not None \
            and summary.pass_hat_k + 1e-9 < gates.min_pass_hat_k:
        k = summary.max_trials
        missed.append(f"pass^k {summary.pass_hat_k:.1%} (the share of scenarios whose every one of up to {k} "
                      f"trials passed) is below the minimum {gates.min_pass_hat_k:.1%} (llmsim_min_pass_hat_k)")
    if gates.max_cost_usd is not None and summary.total_cost_usd > gates.max_cost_usd:
        missed.append(f"cost ${summary.total_cost_usd:.6f} spent on live calls is above the maximum "
                      f"${gates.max_cost_usd:g} (llmsim_max_cost_usd)")
    return missed


def summary_dict(summary: RunSummary, gates: Gates, missed: Sequence[str],
                 baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary as exports write it: the totals plus the gates, whether they were checked, and the missed;
    ``baseline`` is the comparison with the baseline (``baseline.Comparison.summary_dict()``; None: none)."""
    data = summary.to_dict()
    unchecked = gates_unchecked_reason(summary)
    data["gates"] = {**gates.to_dict(), "checked": gates.any and unchecked is None, "missed": list(missed)}
    data["baseline"] = dict(baseline) if baseline is not None else None
    return data


def known_failures_text(summary: RunSummary, names: int = 10) -> str | None:
    """``2 known failures (failed on the baseline too; ...): a, b``; None when there are none."""
    known = summary.known_failures
    if not known:
        return None
    more = len(known) - names
    shown = ", ".join(known[:names]) + (f" and {more} more" if more > 0 else "")
    noun = "known failure" if len(known) == 1 else "known failures"
    return (f"{len(known)} {noun} (failed on the baseline too; --llmsim-gate=regressions does not fail the run for "
            f"them): {shown}")


def local_judge_text(summary: RunSummary) -> str | None:
    """One line when the judge is a local model: what it is, its recorded calibration accuracy, and that its
    verdicts are not evidence; None otherwise."""
    judge = summary.local_judge
    if not judge:
        return None
    what = f"the {'bundled ' if judge.get('bundled') else ''}local model {judge.get('model')}"
    calibration = judge.get("calibration")
    if not isinstance(calibration, Mapping):
        return (f"the judge is {what}, whose agreement with human scores was never measured: calibrate it "
                "(--llmsim-calibrate) before trusting its verdicts")
    return (f"the judge is {what}, which agreed with the shipped calibration labels on {calibration['agreed']} "
            f"of {calibration['cases']} conversations ({calibration['accuracy']:.1%}, measured "
            f"{calibration['measured']}): its scores are not evidence; configure an endpoint for verdicts that "
            "mean something")


def local_judge_baseline_text(summary: RunSummary) -> str | None:
    """The caveat under a baseline comparison made with a local judge; None otherwise."""
    judge = summary.local_judge
    if not judge:
        return None
    calibration = judge.get("calibration")
    accuracy = (f"{calibration['accuracy']:.1%} calibration accuracy" if isinstance(calibration, Mapping)
                else "calibration accuracy never measured")
    return (f"the score deltas since the baseline come from the local judge {judge.get('model')} ({accuracy}): "
            "they are not evidence of a change")
