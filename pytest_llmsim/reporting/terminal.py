"""Plain-text renderings of a run: transcripts and the llmsim terminal summary, as lines (no pytest).

Why one module: it is the plain-text wording of a run (transcripts, metric lines, status words, totals, baseline
lines, the summary), which the other renderers reuse so that every report words a result alike.

Every function returns text; the pytest layer only writes it (``TerminalReporter.write_line(text, **markup)``),
so the renderings are tested without a pytest session and a CLI can print the same lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_llmsim.errors import ErrorKind
from pytest_llmsim.llm.pricing import sources_text
from pytest_llmsim.model.results import (
    BLAME_UNKNOWN,
    Outcome,
    ScenarioRecord,
    ScenarioResult,
    Status,
    failure_reason,
    judge_details,
    spoken_lines,
)
from pytest_llmsim.reporting.summary import (
    Gates,
    RunSummary,
    gates_unchecked_reason,
    incomplete_cause,
    incomplete_text,
    outcome_counts,
    pass_rate_text,
    plural,
)

if TYPE_CHECKING:
    from pytest_llmsim.reporting.baseline import Comparison, ScenarioDelta

TABLE_ROWS_DEFAULT = 50  # above this many scenarios the table lists only failures and errors unless -v
NAME_WIDTH = 70
SPEAKERS = {"client": "Customer", "agent": "Agent"}
_SHOWN_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ERROR})


class Line(NamedTuple):
    """One terminal line and its markup (``red``, ``green``, ``yellow``, ``bold``; ``separator``: a title
    written across the terminal between ``=`` signs)."""

    text: str
    markup: Mapping[str, bool] = {}


# -- transcripts ---------------------------------------------------------------------------------------------
def transcript_lines(transcript: Sequence[Mapping[str, Any]], ended_by: str, end_reason: str, *,
                     last: int | None = None) -> list[str]:
    """Numbered turns (``  3. Customer: ...``; a multi-agent turn one line per speaker, ``  4. Agent [Billing]:
    ...``, then its handoffs), then who ended the call; ``last`` keeps only the last turns."""
    turns = list(transcript) if last is None else list(transcript)[-last:]
    first = len(transcript) - len(turns) + 1
    lines = [f"{first + i:>3}. {speaker}: {text}" for i, t in enumerate(turns)
             for speaker, text in spoken_lines(t, SPEAKERS["client"], SPEAKERS["agent"])]
    if ended_by:
        lines.append(f"     [call ended by {ended_by}: {end_reason}]")
    return lines


def result_transcript_text(result: ScenarioResult) -> str:
    """A conversation as the item's ``llmsim transcript`` report section shows it."""
    return "\n".join(transcript_lines(result.transcript, result.ended_by, result.end_reason))


# -- metrics -------------------------------------------------------------------------------------------------
_LINE_BREAKS = re.compile(r"\r\n|\r|\n|\u2028|\u2029")
JUDGE_METRIC = "judge"


def metric_entries(metrics: Any) -> list[Mapping[str, Any]]:
    """A result's ``metrics`` that are metric results (``{"name", "score", "passed", "reason", "details"}``), in
    order; anything else (a malformed export read back) is left out."""
    if not isinstance(metrics, list | tuple):
        return []
    return [metric for metric in metrics if isinstance(metric, Mapping)]


def metric_score_text(score: Any) -> str:
    """A metric's score as people read it: an int as is, a float with up to 2 decimals (``0.41``, ``0.5``,
    ``1``), ``-`` for none."""
    if score is None:
        return "-"
    if isinstance(score, bool) or not isinstance(score, int | float):
        return str(score)
    if isinstance(score, int):
        return str(score)
    if not math.isfinite(score):
        return str(score)
    text = f"{score:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def metric_verdict(metric: Mapping[str, Any]) -> str:
    """``passed``, ``failed``, ``info`` (``passed`` None: no threshold, the metric only informs) or ``error`` (the
    metric raised: the scenario is an error)."""
    if metric.get("error"):
        return "error"
    passed = metric.get("passed")
    return "passed" if passed is True else "failed" if passed is False else "info"


def metric_min_score(metric: Mapping[str, Any]) -> Any:
    """The minimum a metric's score was held to (the judge's ``details.min_score``), or None."""
    details = metric.get("details")
    return details.get("min_score") if isinstance(details, Mapping) else None


def one_line(text: Any) -> str:
    return _LINE_BREAKS.sub(" ", "" if text is None else str(text)).strip()


def metric_label(metric: Mapping[str, Any]) -> str:
    """A metric's name, and the agent it reads when it targets one: ``rules [Billing]``."""
    details = metric.get("details")
    agent = details.get("agent") if isinstance(details, Mapping) else None
    name = f"{metric.get('name', '?')}"
    return f"{name} [{agent}]" if isinstance(agent, str) else name


def metric_line(metric: Mapping[str, Any]) -> str:
    """``metric judge: 1 (min 2) FAILED - The agent was rude.``, ``metric rouge: 0.41 passed``, ``metric tone:
    0.8 info - friendly``: name, score, the minimum when the metric has one, the verdict and, for a failed or
    informational metric, its reason (on one line)."""
    text = f"metric {metric_label(metric)}:"
    if metric.get("score") is not None:
        text += f" {metric_score_text(metric.get('score'))}"
    minimum = metric_min_score(metric)
    if minimum is not None:
        text += f" (min {metric_score_text(minimum)})"
    verdict = metric_verdict(metric)
    text += " FAILED" if verdict == "failed" else f" {verdict}"
    details = metric.get("details")
    if not isinstance(details, Mapping):
        details = {}
    scores = details.get("scores") if isinstance(details, Mapping) else None
    if isinstance(scores, list) and len(scores) > 1:  # the judge's repeats
        text += (f" [verdicts {', '.join(map(str, scores))} by {details.get('policy')}"
                 f"{', UNSTABLE: they straddle the minimum' if details.get('unstable') else ''}]")
    reason = one_line(metric.get("reason"))
    if reason and verdict != "passed":
        text += f" - {reason}"
    return text


def metric_lines(result: ScenarioResult) -> list[str]:
    """One ``metric_line`` per metric of ``result``, in the scenario's order."""
    return [metric_line(metric) for metric in metric_entries(result.metrics)]


def failed_metric_names(result: ScenarioResult) -> list[str]:
    """The names of ``result``'s failed metrics, in order."""
    return [str(m.get("name", "?")) for m in metric_entries(result.metrics) if m.get("passed") is False]


def trial_lines(result: ScenarioResult) -> list[str]:
    """A combined result's trials: what they say together, then one line per trial (none without trials)."""
    if not result.trials:
        return []
    from pytest_llmsim.model.results import result_stats, verdict_text

    lines = [f"trials: {verdict_text(result_stats(result), result.min_pass_rate)}; the conversation shown is "
             f"trial {result.shown_trial}'s"]
    for trial in result.trials:
        score = trial.get("score")
        status = str(trial.get("status") or "error")
        text = f"  trial {trial.get('trial')} (seed {trial.get('seed')}): {status}"
        if score is not None:
            text += f", score {score}"
        failed = [str(m.get("name", "?")) for m in metric_entries(trial.get("metrics")) if m.get("passed") is False]
        if failed:
            text += f", failed {', '.join(failed)}"
        text += f", {trial.get('total_turns', len(trial.get('transcript') or []))} turns"
        if trial.get("ended_by"):
            text += f", ended by {trial.get('ended_by')}"
        if status == "error":
            text += f" [{trial.get('error_kind')}: {one_line(trial.get('error_message'))[:200]}]"
        lines.append(text)
    return lines


def failure_headline(result: ScenarioResult) -> str:
    """The first line of a failed scenario: ``scenario 'a' scored 1 (min_score 2)`` when the judge alone failed
    (or the result has no metrics); ``scenario 'a' failed metrics: judge (score 1, min 2), rules`` when other
    metrics failed; ``scenario 'a' failed its trials: 2 of 5 trials passed (...)`` with trials."""
    if result.trials:
        from pytest_llmsim.model.results import result_stats, verdict_text

        return (f"scenario {result.scenario!r} failed its trials: "
                f"{verdict_text(result_stats(result), result.min_pass_rate)}")
    failed = [m for m in metric_entries(result.metrics) if m.get("passed") is False]
    if all(m.get("name") == JUDGE_METRIC for m in failed):
        return f"scenario {result.scenario!r} scored {result.score} (min_score {result.min_score})"
    names = []
    for metric in failed:
        name = str(metric.get("name", "?"))
        if name == JUDGE_METRIC and metric.get("score") is not None:
            minimum = metric_min_score(metric)
            if minimum is None:
                minimum = result.min_score
            more = "" if minimum is None else f", min {metric_score_text(minimum)}"
            name += f" (score {metric_score_text(metric.get('score'))}{more})"
        names.append(name)
    return f"scenario {result.scenario!r} failed metrics: {', '.join(names)}"


def metrics_cell(metrics: Any) -> str:
    """The metrics as one CSV cell: ``judge=3:passed;rules=0.5:failed;rouge=0.41:info`` (no score: empty)."""
    return ";".join(f"{m.get('name', '?')}={'' if m.get('score') is None else metric_score_text(m.get('score'))}"
                    f":{metric_verdict(m)}" for m in metric_entries(metrics))


def record_text(record: ScenarioRecord) -> str:
    """Verdict, metrics, judge's comment, error and the whole chat of one record (the JUnit ``system-out``)."""
    r = record.result
    lines = [f"scenario {r.scenario!r}: {r.status}, score {r.score} (min_score {r.min_score})"]
    if record.outcome not in (Outcome.PASSED, Outcome.FAILED, Outcome.ERROR):
        lines[0] += f" [{record.outcome}]"
    lines.extend(trial_lines(r))
    lines.extend(metric_lines(r))
    if r.comment:
        lines.append(f"judge: {r.comment}")
    if r.blame and r.blame != BLAME_UNKNOWN:
        lines.append(f"blame: {r.blame}")
    if r.tool_calls:
        lines.append(f"tools called: {', '.join(r.tool_calls)}")
    if r.error_message:
        lines.append(f"error ({r.error_kind}): {r.error_message}")
    lines.extend(transcript_lines(r.transcript, r.ended_by, r.end_reason))
    return "\n".join(lines) + "\n"


# -- the summary ---------------------------------------------------------------------------------------------
def usd(value: float) -> str:
    return f"${value:.6f}"


def decided(data: Mapping[str, Any]) -> tuple[str, str]:
    """``(decided_by, reason)`` of a ``ScenarioResult.to_dict()``: its own keys (they survive the report's
    trimming, see ``collector.trimmed_report_data``), else computed (``results.failure_reason``)."""
    if "decided_by" in data:
        return str(data.get("decided_by") or ""), str(data.get("failure_reason") or "")
    return failure_reason(data)


def progress_word(outcome: str, data: Mapping[str, Any]) -> str:
    """The word of a scored item in pytest's progress line (``-v``) and short summary: pytest's outcome and what
    decided it. ``PASSED (score 3, min 2)``; ``FAILED (score 1, min 2)`` when the judge's score failed it;
    ``FAILED (rules: tool 'lookup_order' never called)`` when another metric did (every failed metric listed);
    ``FAILED (2/5 trials passed)``; a strict XPASS (its conversation passed) ``FAILED (strict xfail passed; score
    3, min 2)``; a test that passed although its ``llmsim`` conversation failed says so."""
    word = str(outcome).upper()
    trials = [t for t in data.get("trials") or [] if isinstance(t, Mapping)]
    if trials:
        passed = sum(1 for t in trials if t.get("status") == "passed")
        return f"{word} ({passed}/{len(trials)} trials passed)"
    unstable = ", unstable" if judge_details(data.get("metrics")).get("unstable") is True else ""
    score = f"score {data.get('score')}, min {data.get('min_score')}{unstable}"
    status = str(data.get("status"))
    decided_by, reason = decided(data)
    if status == Status.FAILED and decided_by != JUDGE_METRIC and reason:
        return f"{word} ({reason})" if outcome == Outcome.FAILED else f"{word} (conversation failed: {reason})"
    if outcome == Outcome.FAILED and status == Status.PASSED:
        return f"{word} (strict xfail passed; {score})"
    return f"{word} ({score})"


def status_text(record: ScenarioRecord) -> str:
    """The table's status cell (and the pytest-html verdict badge): pytest's outcome, with the verdict where they
    differ and the failed metrics when a metric other than the judge failed the item (the score column shows the
    judge's)."""
    outcome, status = record.outcome, record.status
    if outcome == Outcome.PASSED:
        return "passed"
    if outcome == Outcome.FAILED:
        if status == Status.PASSED:
            return "FAILED (strict xfail passed)"
        decided_by, reason = record.result.failure
        return f"FAILED ({reason})" if reason and decided_by != JUDGE_METRIC else "FAILED"
    if outcome == Outcome.ERROR:
        return f"ERROR ({record.error_kind or ErrorKind.ERROR})"
    if outcome == Outcome.XFAILED and status in (Status.FAILED, Status.ERROR):
        decided_by, reason = record.result.failure
        detail = ("score below min" if decided_by == JUDGE_METRIC else reason or "failed") \
            if status == Status.FAILED else str(record.error_kind or ErrorKind.ERROR)
        return f"xfailed ({detail})"
    return str(outcome)


def table_lines(records: Sequence[ScenarioRecord], verbosity: int) -> list[Line]:
    """The per-scenario table; above ``TABLE_ROWS_DEFAULT`` rows only failures and errors unless ``-v``."""
    hidden = 0
    if verbosity < 1 and len(records) > TABLE_ROWS_DEFAULT:
        shown = [r for r in records if r.outcome in _SHOWN_OUTCOMES]
        hidden = len(records) - len(shown)
        records = shown
    rows = []
    for r in records:
        name = r.nodeid if len(r.nodeid) <= NAME_WIDTH else "…" + r.nodeid[-(NAME_WIDTH - 1):]
        score = "-" if r.score is None else f"{r.score} (min {r.min_score})"
        if r.result.trials:
            stats = r.trial_figures()
            score = f"{stats['passed_trials']}/{stats['trials']} trials, mean {stats['mean_score']}"
        rows.append(((name, score, str(r.result.total_turns), usd(r.cost_usd), status_text(r)),
                     r.outcome in _SHOWN_OUTCOMES))
    header = ("scenario", "score", "turns", "cost", "status")
    widths = [max([len(header[i]), *(len(cells[i]) for cells, _ in rows)]) for i in range(4)]

    def fmt(cells: tuple[str, ...]) -> str:
        return (f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:>{widths[2]}}  "
                f"{cells[3]:>{widths[3]}}  {cells[4]}")

    lines = [Line(fmt(header), {"bold": True})]
    lines.extend(Line(fmt(cells), {"red": True} if bad else {}) for cells, bad in rows)
    if hidden:
        lines.append(Line(f"... and {plural(hidden, 'scenario')} that did not fail (-v lists every scenario)"))
    return lines


def totals_lines(summary: RunSummary) -> list[str]:
    """The totals under the table (default verbosity)."""
    stats = summary.score_statistics
    distribution = ", ".join(f"{key[-1]}: {count}" for key, count in summary.score_distribution.items())
    scores = ("scores: none (no scenario was scored)" if stats.mean is None else
              f"scores: mean {stats.mean:g}, median {stats.median:g}, std {stats.std:g}, min {stats.min}, "
              f"max {stats.max}; distribution {distribution}")
    lines = [
        f"scenarios: {summary.total_scenarios} ({outcome_counts(summary)}), pass rate {pass_rate_text(summary)}",
        scores,
        f"tokens: {summary.total_tokens} live + {summary.replayed_tokens} replayed "
        f"(prompt {summary.prompt_tokens}, completion {summary.completion_tokens})",
        f"LLM calls: {summary.total_requests} live, {summary.replayed_requests} replayed (recordings or cache)",
        f"cost: {usd(summary.total_cost_usd)} spent on live calls, {usd(summary.saved_cost_usd)} saved by replays",
    ]
    if summary.max_trials > 1:
        lines.append(trials_text(summary))
    if summary.effective_rpm is not None or summary.rate_limited_requests:
        lines.append(rate_limits_text(summary))
    if summary.failures_by_blame:
        lines.append(blame_text(summary))
    if summary.judge_repeated:
        lines.append(judge_agreement_text(summary))
    if summary.unpriced_models:
        lines.append(f"unpriced models (counted at $0; add them to llmsim_prices): "
                     f"{', '.join(summary.unpriced_models)}")
    if summary.price_sources:
        lines.append(f"prices: {sources_text(summary.price_sources)}")
    return lines


def rate_limits_text(summary: RunSummary) -> str:
    """``rate limits: 3 requests answered 429, requests waited 12.5 s for the limiter; 590 requests/min, 41200
    tokens/min (148000 counted against a tokens-per-minute limit)`` (runs with live calls; the wait is summed over
    the requests, so it can exceed the wall time)."""
    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:g}"

    return (f"rate limits: {summary.rate_limited_requests} requests answered 429, requests waited "
            f"{summary.limiter_wait_seconds:g} s for the limiter; {rate(summary.effective_rpm)} requests/min, "
            f"{rate(summary.effective_tpm)} "
            f"tokens/min ({rate(summary.reserved_tpm)} counted against a tokens-per-minute limit)")


def blame_text(summary: RunSummary) -> str:
    """``failed conversations by blame: agent 3, customer 1 (judge's blame, else what the transcript shows)``."""
    counts = ", ".join(f"{blame} {count}" for blame, count in summary.failures_by_blame.items())
    total = sum(summary.failures_by_blame.values())
    simulator = summary.failures_by_blame.get("customer", 0)
    note = (f"; {simulator} of {total} are the simulated customer's fault" if simulator * 2 >= total and simulator
            else "")
    return f"failed conversations by blame: {counts}{note}"


def judge_agreement_text(summary: RunSummary) -> str:
    """``judge: 7 of 10 repeated verdicts unanimous (70.0%); unstable: a, b``."""
    unstable = summary.judge_unstable_scenarios
    share = summary.judge_unanimous_share or 0.0
    shown = ", ".join(unstable[:NAMES_LISTED]) + (f" and {len(unstable) - NAMES_LISTED} more"
                                                  if len(unstable) > NAMES_LISTED else "")
    return (f"judge repeats: {round(share * summary.judge_repeated)} of {summary.judge_repeated} conversations "
            f"judged unanimously ({share:.1%}); unstable (verdicts straddle the minimum): {len(unstable)}"
            f"{f' ({shown})' if unstable else ''}")


def trials_text(summary: RunSummary) -> str:
    """``trials: 50 conversations, up to 5 per scenario; pass^k 70.0% ..., flaky: a, b`` (runs with trials)."""
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    flaky = summary.flaky_scenarios
    shown = ", ".join(flaky[:NAMES_LISTED]) + (f" and {len(flaky) - NAMES_LISTED} more" if len(flaky) > NAMES_LISTED
                                               else "")
    return (f"trials: {summary.conversations} conversations, up to {summary.max_trials} per scenario; pass^k "
            f"{share(summary.pass_hat_k)} (every trial passed), pass@k {share(summary.pass_at_k)} (at least one); "
            f"flaky: {len(flaky)}{f' ({shown})' if flaky else ''}")


def totals_line(summary: RunSummary) -> str:
    """The one-line total printed under ``-q``."""
    mean = summary.score_statistics.mean
    unpriced = f", unpriced: {', '.join(summary.unpriced_models)}" if summary.unpriced_models else ""
    if summary.max_trials > 1 and summary.pass_hat_k is not None:
        unpriced = f", pass^k {summary.pass_hat_k:.1%}, flaky {len(summary.flaky_scenarios)}" + unpriced
    partial = "" if summary.complete else (f", {incomplete_cause(summary).upper()}: "
                                           f"{summary.unfinished_scenarios} did not finish")
    scenarios = "scenario" if summary.total_scenarios == 1 else "scenarios"
    return (f"llmsim: {summary.total_scenarios} {scenarios}, {outcome_counts(summary)}, pass rate "
            f"{pass_rate_text(summary)}, mean score {'n/a' if mean is None else f'{mean:g}'}, tokens "
            f"{summary.total_tokens} live + {summary.replayed_tokens} replayed, calls {summary.total_requests} "
            f"live / {summary.replayed_requests} replayed, cost {usd(summary.total_cost_usd)} "
            f"(saved {usd(summary.saved_cost_usd)}){unpriced}{partial}")


# -- changes since the baseline -----------------------------------------------------------------------------
NAMES_LISTED = 10  # new and missing scenarios named before "and N more"


def signed_usd(value: float) -> str:
    return f"{'-' if value < 0 else '+'}${abs(value):.6f}"


def delta_text(delta: ScenarioDelta) -> str:
    """One changed scenario: ``s.json::a: regressed: score 3 -> 1 (-2), passed -> failed (newly failing), turns
    +2, tokens +130, cost +$0.000012, transcript changed``."""
    parts = []
    if delta.old_score == delta.new_score:
        if delta.new_score is not None:
            parts.append(f"score {delta.new_score}")
    else:
        score = f"score {'-' if delta.old_score is None else delta.old_score} -> " \
                f"{'-' if delta.new_score is None else delta.new_score}"
        if delta.score_delta is not None:
            score += f" ({delta.score_delta:+g})"
        parts.append(score)
    if delta.old_status != delta.new_status:
        status = f"{delta.old_status} -> {delta.new_status}"
        if delta.newly_failing:
            status += " (newly failing)"
        elif delta.newly_passing:
            status += " (newly passing)"
        parts.append(status)
    if delta.new_outcome and not delta.counted:
        parts.append(f"{delta.new_outcome}: not counted")
    if delta.turns_delta:
        parts.append(f"turns {delta.turns_delta:+d}")
    if delta.tokens_delta:
        parts.append(f"tokens {delta.tokens_delta:+d}")
    if delta.cost_delta_usd:
        parts.append(f"cost {signed_usd(delta.cost_delta_usd)}")
    if delta.transcript_changed:
        parts.append("transcript changed")
    return f"{delta.nodeid}: {delta.label}: {', '.join(parts)}"


def _names(nodeids: Sequence[str]) -> str:
    more = len(nodeids) - NAMES_LISTED
    return ", ".join(nodeids[:NAMES_LISTED]) + (f" and {more} more" if more > 0 else "")


def baseline_counts_text(comparison: Comparison) -> str:
    """``1 regressed, 1 improved, 0 changed, 3 unchanged, 1 new, 0 missing; mean score 2.5 -> 2 (-0.5) over 4
    scenarios scored in both``."""
    counts = comparison.counts()
    text = ", ".join(f"{counts[label]} {label}" for label in ("regressed", "improved", "changed", "unchanged", "new",
                                                              "missing"))
    if comparison.mean_score_delta is None:
        return text + "; mean score: no scenario scored in both"
    return (f"{text}; mean score {comparison.old_mean_score:g} -> {comparison.new_mean_score:g} "
            f"({comparison.mean_score_delta:+g}) over {plural(comparison.scored_in_both, 'scenario')} scored in both")


def baseline_lines(comparison: Comparison, verbosity: int) -> list[Line]:
    """The changes since the baseline: one line per changed scenario (regressed red, improved green; above
    ``TABLE_ROWS_DEFAULT`` only the regressed unless ``-v``), the counts, the new and missing scenarios."""
    baseline = comparison.baseline
    partial = ", a partial run" if baseline.partial else ""
    lines = [Line(f"changes since the baseline ({baseline.label}: {plural(len(baseline.records), 'scenario')} from "
                  f"{'an export' if baseline.source == 'export' else 'recordings'}{partial}):", {"bold": True})]
    changed = [d for d in comparison.deltas if d.changed]
    hidden = 0
    if verbosity < 1 and len(changed) > TABLE_ROWS_DEFAULT:
        shown = [d for d in changed if d.regressed]
        hidden, changed = len(changed) - len(shown), shown
    markup = {"regressed": {"red": True}, "improved": {"green": True}}
    lines.extend(Line(f"  {delta_text(d)}", markup.get(d.label, {})) for d in changed)
    if hidden:
        lines.append(Line(f"  ... and {hidden} more changed scenarios that did not regress (-v lists them)"))
    if not comparison.deltas or not any(d.changed for d in comparison.deltas):
        lines.append(Line("  no scenario changed since the baseline"))
    lines.append(Line(f"  {baseline_counts_text(comparison)}", {"bold": True}))
    if comparison.new:
        lines.append(Line(f"  new in this run: {_names(comparison.new)}"))
    if comparison.missing:
        lines.append(Line(f"  in the baseline, not in this run: {_names(comparison.missing)}"))
    return lines


def baseline_line(comparison: Comparison) -> str:
    """The one baseline line printed under ``-q``."""
    return f"llmsim baseline {comparison.baseline.label}: {baseline_counts_text(comparison)}"


def backend_messages(records: Iterable[ScenarioRecord]) -> list[str]:
    """The distinct 'backend missing' messages, without their ``<nodeid> <role> turn <n>: `` prefix."""
    messages: list[str] = []
    for record in records:
        if record.error_kind != ErrorKind.BACKEND_MISSING:
            continue
        message = record.result.error_message
        if message.startswith(record.nodeid) and ": " in message:
            message = message.split(": ", 1)[1]
        if message not in messages:
            messages.append(message)
    return messages


def summary_lines(records: Sequence[ScenarioRecord], summary: RunSummary, *, gates: Gates,
                  missed: Sequence[str], verbosity: int, notes: Sequence[Line] = (),
                  backend: Sequence[str] = (), comparison: Comparison | None = None) -> list[Line]:
    """Everything the plugin prints at the end of a session, in order (``-q``: one totals line, and one for the
    baseline); the changes since the baseline follow the table and totals."""
    quiet = verbosity < 0
    incomplete = incomplete_text(summary)
    if not records and not notes and not backend and not summary.unfinished_scenarios:
        if gates.any and not quiet:
            return [Line("llmsim: no scenario ran; suite gates not checked")]
        return []
    lines: list[Line] = []
    if not quiet:
        lines.append(Line("llmsim summary", {"separator": True}))
    lines.extend(Line(f"llmsim: {message}", {"red": True, "bold": True}) for message in backend)
    if quiet:
        lines.append(Line(totals_line(summary)))
        if comparison is not None:
            lines.append(Line(baseline_line(comparison), {"red": True} if comparison.regressed else {}))
    elif records:
        lines.extend(table_lines(records, verbosity))
        lines.extend(Line(text) for text in totals_lines(summary))
    if comparison is not None and not quiet:
        lines.extend(baseline_lines(comparison, verbosity))
    if incomplete is not None and not quiet:
        lines.append(Line(f"llmsim: run {incomplete_cause(summary)}: {incomplete} (exports say so: "
                          f"interrupted={'true' if summary.interrupted else 'false'}, unfinished_scenarios="
                          f"{summary.unfinished_scenarios})", {"yellow": True, "bold": True}))
    lines.extend(Line(f"llmsim gate missed: {text}", {"red": True, "bold": True}) for text in missed)
    if gates.any and not missed and not quiet:
        unchecked = gates_unchecked_reason(summary)
        if unchecked is None:
            lines.append(Line("llmsim: all suite gates met", {"green": True}))
        elif summary.total_scenarios:
            lines.append(Line(f"llmsim: suite gates not checked: {unchecked}", {"yellow": True}))
    if not quiet:
        lines.extend(notes)
    return lines
