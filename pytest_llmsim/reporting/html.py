"""HTML fragments for the pytest-html report: a scenario's chat and the run summary (no pytest, no pytest-html).

pytest-html inserts these fragments as raw HTML, so every value that came from a model, a scenario file or
the user is passed through ``html.escape`` here: a reply containing ``<script>`` shows as text, and so do a
tool call's name, arguments and result.

``baseline_diff_html`` shows a scenario's baseline and current transcripts side by side, turn by turn, from
``diff_turns`` (a turn-level diff that the markdown summary uses too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from html import escape
from typing import TYPE_CHECKING, Any, Literal

from pytest_llmsim.llm.pricing import sources_text
from pytest_llmsim.model.results import (
    ScenarioRecord,
    ScenarioResult,
    handoff_text,
    tool_call_parts,
    turn_handoffs,
    turn_key,
    turn_messages,
    turn_tool_calls,
)
from pytest_llmsim.reporting.summary import (
    Gates,
    RunSummary,
    gates_unchecked_reason,
    incomplete_cause,
    incomplete_text,
    local_judge_text,
    outcome_counts,
    pass_rate_text,
)
from pytest_llmsim.reporting.terminal import (
    blame_text,
    judge_agreement_text,
    metric_entries,
    metric_label,
    metric_min_score,
    metric_score_text,
    metric_verdict,
    one_line,
    rate_limits_text,
    status_text,
    trials_text,
)

if TYPE_CHECKING:  # only for annotations: no import-time dependency on the baseline comparison
    from pytest_llmsim.reporting.baseline import ScenarioDelta

SPEAKERS = {"client": "Customer", "agent": "Agent"}

STYLE = """<style>
.llmsim-card{font-family:Helvetica,Arial,sans-serif;font-size:13px;color:#222;margin:6px 0 10px;max-width:980px}
.llmsim-meta{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:8px;align-items:center}
.llmsim-pill{background:#eef1f4;border:1px solid #d5dbe1;border-radius:10px;padding:2px 8px;color:#333}
.llmsim-verdict{font-weight:bold;border-radius:10px;padding:2px 10px;color:#fff;background:#777}
.llmsim-verdict-passed{background:#449d44}.llmsim-verdict-failed,.llmsim-verdict-error{background:#c9302c}
.llmsim-verdict-xfailed,.llmsim-verdict-xpassed{background:#d58512}.llmsim-verdict-skipped{background:#777}
.llmsim-score{font-weight:bold}
.llmsim-status-failed,.llmsim-status-error{border-color:#c9302c;color:#a94442;font-weight:bold}
.llmsim-metrics{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 8px}
.llmsim-metric{border:1px solid #d5dbe1;border-radius:10px;padding:2px 8px;background:#eef1f4;color:#333;
  max-width:100%;word-break:break-word}
.llmsim-metric-name{font-weight:bold}.llmsim-metric-verdict{font-size:11px;text-transform:uppercase}
.llmsim-metric-passed{background:#dff0d8;border-color:#b2d8a5;color:#2b542c}
.llmsim-metric-failed{background:#f2dede;border-color:#e4b9b9;color:#a94442}
.llmsim-metric-failed .llmsim-metric-verdict{font-weight:bold}
.llmsim-metric-info{background:#eef1f4;border-color:#d5dbe1;color:#555}
.llmsim-metric-error{background:#fcf8e3;border-color:#e8d9a0;color:#8a6d3b;font-weight:bold}
.llmsim-judge{background:#fcf8e3;border-left:4px solid #d58512;padding:6px 10px;margin:6px 0;white-space:pre-wrap}
.llmsim-error{background:#f2dede;border-left:4px solid #c9302c;padding:6px 10px;margin:6px 0;
  white-space:pre-wrap;font-family:monospace}
.llmsim-chat{display:flex;flex-direction:column;gap:6px;margin:8px 0}
.llmsim-turn{max-width:72%;display:flex;flex-direction:column}
.llmsim-client{align-self:flex-start}.llmsim-agent{align-self:flex-end;align-items:flex-end}
.llmsim-who{font-size:11px;color:#555;margin:0 6px 2px}
.llmsim-bubble{border-radius:12px;padding:6px 10px;white-space:pre-wrap;word-break:break-word;line-height:1.35}
.llmsim-client .llmsim-bubble{background:#e3eefc;border:1px solid #b9d2f3;border-top-left-radius:2px}
.llmsim-agent .llmsim-bubble{background:#e4f5e1;border:1px solid #bfe3b8;border-top-right-radius:2px}
.llmsim-tag{font-size:10px;color:#888;margin-left:4px}
.llmsim-speaker{display:inline-block;font-size:11px;font-weight:bold;background:#e8eaf6;border-radius:3px;
  padding:0 4px;margin-right:6px}
.llmsim-message+.llmsim-message{margin-top:6px}
.llmsim-handoff{font-size:11px;color:#555;font-style:italic;margin-top:4px}
.llmsim-tool{font-family:monospace;font-size:11px;background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;
  padding:3px 6px;margin:2px 0 4px;white-space:pre-wrap;word-break:break-word;text-align:left}
.llmsim-tool-label{color:#777}.llmsim-tool-name{font-weight:bold}.llmsim-tool-result{color:#2b6a2b}
.llmsim-end{color:#555;font-style:italic;border-top:1px dashed #ccc;padding-top:4px}
.llmsim-trials{margin:8px 0}.llmsim-trials table{border-collapse:collapse;margin:4px 0}
.llmsim-trials td,.llmsim-trials th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.llmsim-trial summary{cursor:pointer;margin:4px 0}
.llmsim-summary{font-family:Helvetica,Arial,sans-serif;color:#222;margin:8px 0 14px;padding:10px 14px;
  border:1px solid #d5dbe1;border-radius:6px;background:#fafbfc;max-width:820px}
.llmsim-summary h3{margin:0 0 8px;font-size:15px}
.llmsim-totals{border-collapse:collapse;font-size:13px}
.llmsim-totals th{text-align:left;padding:3px 14px 3px 0;color:#555;font-weight:normal;white-space:nowrap}
.llmsim-totals td{padding:3px 0;color:#222}
.llmsim-dist{display:flex;gap:10px;align-items:flex-end}
.llmsim-dist-col{display:flex;flex-direction:column;align-items:center;font-size:11px}
.llmsim-dist-bar{width:28px;border-radius:3px 3px 0 0}
.llmsim-gate-missed{color:#a94442;font-weight:bold;margin-top:6px}
.llmsim-gate-ok{color:#3c763d;margin-top:6px}
.llmsim-incomplete{color:#8a6d3b;background:#fcf8e3;border-left:4px solid #d58512;padding:4px 8px;margin-top:6px}
.llmsim-diff-table{border-collapse:collapse;width:100%;table-layout:fixed;margin:8px 0;font-size:12px}
.llmsim-diff-table th{text-align:left;background:#eef1f4;border:1px solid #d5dbe1;padding:4px 6px}
.llmsim-diff-table td{vertical-align:top;border:1px solid #e1e4e8;padding:4px 6px}
.llmsim-diff-table .llmsim-diff-num{width:56px;color:#777;font-size:11px;white-space:nowrap}
.llmsim-diff-text{white-space:pre-wrap;word-break:break-word;line-height:1.35}
.llmsim-diff-changed td.llmsim-diff-side{background:#fff8c5}
.llmsim-diff-removed td.llmsim-diff-old{background:#ffebe9}
.llmsim-diff-added td.llmsim-diff-new{background:#e6ffec}
.llmsim-diff-removed td.llmsim-diff-new,.llmsim-diff-added td.llmsim-diff-old{background:#f6f8fa}
.llmsim-diff-mark{font-size:10px;font-weight:bold;text-transform:uppercase;color:#555}
.llmsim-diff-changed .llmsim-diff-mark{color:#9a6700}.llmsim-diff-removed .llmsim-diff-mark{color:#cf222e}
.llmsim-diff-added .llmsim-diff-mark{color:#1a7f37}
</style>"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def usd(value: float) -> str:
    return f"${value:.6f}"


def cache_state(result: ScenarioResult) -> str:
    live, cached = result.live_calls, result.cached_calls
    if cached and not live:
        return "replayed (recordings or cache)"
    if cached:
        return f"partly replayed ({cached} of {live + cached} calls from the cache)"
    return "live" if live else "no LLM calls"


def verdict_badge(record: ScenarioRecord) -> str:
    """The row's badge: pytest's outcome, coloured by it (green only for a pass), and what decided it, as the
    terminal table's status cell (``FAILED (rules: tool 'lookup_order' never called)``, ``ERROR
    (endpoint_error)``, ``xfailed (score below min)``)."""
    return f'<span class="llmsim-verdict llmsim-verdict-{_e(record.outcome)}">{_e(status_text(record))}</span>'


def score_pill(result: ScenarioResult) -> str:
    """The judge's score against the minimum (``score 3 / min 2``), uncoloured: the verdict badge says whether
    the item passed; a score that met its minimum may still belong to a failed item."""
    shown = "no score" if result.score is None else f"score {result.score}"
    suffix = f" / min {_e(result.min_score)}" if result.min_score is not None else ""
    return f'<span class="llmsim-pill llmsim-score">{_e(shown)}{suffix}</span>'


def tool_call_html(call: Mapping[str, Any]) -> str:
    """One tool call as a small block of its own (name, arguments, result), every part escaped; its text reads
    ``tool `` + ``results.tool_call_text(call)``, as in the terminal and JUnit."""
    name, arguments, result = tool_call_parts(call)
    shown = (f'<div class="llmsim-tool"><span class="llmsim-tool-label">tool</span> '
             f'<span class="llmsim-tool-name">{_e(name)}</span>(<span class="llmsim-tool-args">{_e(arguments)}'
             f'</span>)')
    if result is not None:
        shown += f'<span class="llmsim-tool-result"> -&gt; {_e(result)}</span>'
    return shown + "</div>"


def turn_body_html(turn: Mapping[str, Any]) -> str:
    """A turn's tool calls and text; a multi-agent turn one block per message with its speaker's label, then the
    handoffs. Every name and text escaped (no whitespace between blocks: the bubble keeps its text's breaks)."""
    messages = turn_messages(turn)
    if not messages:
        return "".join(tool_call_html(call) for call in turn_tool_calls(turn)) + _e(turn.get("text"))
    parts = []
    for message in messages:
        tools = "".join(tool_call_html(call) for call in message.get("tool_calls") or [] if isinstance(call, Mapping))
        parts.append(f'<div class="llmsim-message"><span class="llmsim-speaker">{_e(message["agent"])}</span>'
                     f'{tools}{_e(message.get("content") or "")}</div>')
    parts.extend(f'<div class="llmsim-handoff">handoff {_e(handoff_text(handoff))}</div>'
                 for handoff in turn_handoffs(turn))
    return "".join(parts)


def metric_chip(metric: Mapping[str, Any]) -> str:
    """One metric as a chip: name, score (and minimum), passed / failed / info by colour and word; the reason is
    the chip's title and, for a failed metric, shown after it. Every value escaped."""
    verdict = metric_verdict(metric)
    score = ""
    if metric.get("score") is not None:
        score = f' <span class="llmsim-metric-score">{_e(metric_score_text(metric.get("score")))}</span>'
    minimum = metric_min_score(metric)
    if minimum is not None:
        score += f" (min {_e(metric_score_text(minimum))})"
    reason = one_line(metric.get("reason"))
    title = f' title="{_e(reason)}"' if reason else ""
    shown = f'<span class="llmsim-metric-reason">: {_e(reason)}</span>' if reason and verdict == "failed" else ""
    return (f'<span class="llmsim-metric llmsim-metric-{verdict}"{title}><span class="llmsim-metric-name">'
            f'{_e(metric_label(metric))}</span>{score} <span class="llmsim-metric-verdict">{verdict}</span>'
            f"{shown}</span>")


def metrics_html(result: ScenarioResult) -> str:
    """A chip per metric, in the scenario's order ("" for a result without metrics)."""
    chips = [metric_chip(metric) for metric in metric_entries(result.metrics)]
    return f'<div class="llmsim-metrics">{"".join(chips)}</div>' if chips else ""


def scenario_html(record: ScenarioRecord) -> str:
    """The chat of one scenario run with its verdict, tokens, cost, duration and cache state."""
    result = record.result
    pills = [
        score_pill(result),
        f'<span class="llmsim-pill">{result.total_turns} turns</span>',
        f'<span class="llmsim-pill">tokens {result.prompt_tokens} prompt + {result.completion_tokens} '
        f'completion</span>',
        f'<span class="llmsim-pill">cost {usd(record.cost_usd)} (saved {usd(record.saved_cost_usd)})</span>',
        f'<span class="llmsim-pill">{float(result.duration_seconds or 0):.2f} s</span>',
        f'<span class="llmsim-pill">{_e(cache_state(result))}</span>',
    ]
    if result.tool_calls:
        pills.append(f'<span class="llmsim-pill llmsim-tools">tools called: {_e(", ".join(result.tool_calls))}'
                     f'</span>')
    if record.unpriced_models:
        pills.append(f'<span class="llmsim-pill">unpriced: {_e(", ".join(record.unpriced_models))}</span>')
    parts = [f'<div class="llmsim-card"><div class="llmsim-meta">{verdict_badge(record)}{"".join(pills)}</div>',
             metrics_html(result)]
    if result.comment:
        parts.append(f'<div class="llmsim-judge"><strong>Judge:</strong> {_e(result.comment)}</div>')
    if len(result.judge_scores) > 1:
        unstable = " <strong>Unstable:</strong> the verdicts straddle the minimum." if result.judge_unstable else ""
        parts.append(f'<div class="llmsim-judge">Judge verdicts: {_e(", ".join(map(str, result.judge_scores)))}'
                     f'{unstable}</div>')
    if result.blame:
        parts.append(f'<div class="llmsim-judge"><strong>Blame:</strong> {_e(result.blame)}</div>')
    if result.error_message:
        parts.append(f'<div class="llmsim-error">{_e(result.error_kind or "error")}: '
                     f'{_e(result.error_message)}</div>')
    parts.append(chat_html(result.transcript, result.ended_by, result.end_reason))
    parts.append(trials_html(result))
    parts.append("</div>")
    return "".join(parts)


def chat_html(transcript: Sequence[Mapping[str, Any]], ended_by: str, end_reason: str) -> str:
    """The turns of one conversation as chat bubbles, and how it ended."""
    parts = []
    if transcript:
        parts.append('<div class="llmsim-chat">')
        for number, turn in enumerate(transcript, 1):
            role = "client" if turn.get("role") == "client" else "agent"
            tags = []
            if turn.get("scripted"):
                tags.append("scripted")
            if turn.get("cached"):
                tags.append("replayed")
            tag_html = "".join(f'<span class="llmsim-tag">{t}</span>' for t in tags)
            # No whitespace between the blocks: the bubble keeps its text's line breaks (pre-wrap).
            parts.append(f'<div class="llmsim-turn llmsim-{role}"><div class="llmsim-who">#{number} '
                         f'{SPEAKERS[role]}{tag_html}</div><div class="llmsim-bubble">{turn_body_html(turn)}'
                         '</div></div>')
        parts.append("</div>")
    if ended_by:
        parts.append(f'<div class="llmsim-end">Call ended by {_e(ended_by)}: {_e(end_reason)}</div>')
    return "".join(parts)


def trials_html(result: ScenarioResult) -> str:
    """A scenario's trials: a table (seed, verdict, score, failed metrics, turns) and every other trial's chat
    folded below it ("" without trials)."""
    if not result.trials:
        return ""
    from pytest_llmsim.model.results import result_stats, verdict_text

    rows, chats = [], []
    for trial in result.trials:
        number, status = trial.get("trial"), str(trial.get("status") or "error")
        failed = ", ".join(str(m.get("name", "?")) for m in metric_entries(trial.get("metrics"))
                           if m.get("passed") is False)
        detail = failed or (f"{trial.get('error_kind')}: {trial.get('error_message')}" if status == "error" else "")
        score = trial.get("score")
        scored = "" if score is None else f", score {_e(score)}"
        rows.append(f'<tr><td>{_e(number)}</td><td>{_e(trial.get("seed"))}</td>'
                    f'<td class="llmsim-status-{_e(status)}">{_e(status)}</td><td>{"-" if score is None else _e(score)}'
                    f'</td><td>{_e(detail)}</td><td>{len(trial.get("transcript") or [])}</td>'
                    f'<td>{_e(trial.get("ended_by") or "")}</td></tr>')
        if number != result.shown_trial:
            comment = (f'<div class="llmsim-judge"><strong>Judge:</strong> {_e(trial["comment"])}</div>'
                       if trial.get("comment") else "")
            chat = chat_html(trial.get("transcript") or [], str(trial.get("ended_by") or ""),
                             str(trial.get("end_reason") or ""))
            chats.append(f'<details class="llmsim-trial"><summary>Trial {_e(number)} (seed {_e(trial.get("seed"))}):'
                         f' {_e(status)}{scored}</summary>{comment}{chat}</details>')
    head = "".join(f"<th>{name}</th>" for name in ("trial", "seed", "verdict", "score", "failed", "turns",
                                                    "ended by"))
    return (f'<div class="llmsim-trials"><strong>Trials:</strong> '
            f'{_e(verdict_text(result_stats(result), result.min_pass_rate))}; the chat above is trial '
            f'{_e(result.shown_trial)}.<table><tr>{head}</tr>{"".join(rows)}</table>{"".join(chats)}</div>')


def _distribution(summary: RunSummary) -> str:
    counts = [(label, summary.score_distribution.get(f"score_{label}", 0)) for label in ("1", "2", "3")]
    if summary.errored_scenarios:
        counts.append(("error", summary.errored_scenarios))
    top = max([c for _, c in counts] + [1])
    colours = {"1": "#c9302c", "2": "#d58512", "3": "#449d44", "error": "#777"}
    cols = []
    for label, count in counts:
        height = max(2, round(48 * count / top))
        cols.append(f'<div class="llmsim-dist-col"><span>{count}</span><div class="llmsim-dist-bar" '
                    f'style="height:{height}px;background:{colours[label]}"></div><span>{label}</span></div>')
    return f'<div class="llmsim-dist">{"".join(cols)}</div>'


def summary_html(summary: RunSummary, gates: Gates, missed: Sequence[str]) -> str:
    """The run totals shown at the top of the report."""
    stats = summary.score_statistics
    if stats.mean is None:
        scores = "no scored scenario"
    else:
        scores = (f"mean {stats.mean:g} · median {stats.median:g} · std {stats.std:g} · min {stats.min} · "
                  f"max {stats.max}")
    rows = [
        ("Scenarios", f"{summary.total_scenarios} ({outcome_counts(summary)})"),
        ("Pass rate", pass_rate_text(summary)),
        ("Score", scores),
        ("Distribution", None),
        ("Tokens", f"{summary.total_tokens} live + {summary.replayed_tokens} replayed "
                   f"({summary.prompt_tokens} prompt, {summary.completion_tokens} completion)"),
        ("LLM calls", f"{summary.total_requests} live · {summary.replayed_requests} replayed (recordings or cache)"),
        ("Cost", f"{usd(summary.total_cost_usd)} spent · {usd(summary.saved_cost_usd)} saved by replays"),
    ]
    if summary.max_trials > 1:
        rows.append(("Trials", trials_text(summary).removeprefix("trials: ")))
    if summary.effective_rpm is not None or summary.rate_limited_requests:
        rows.append(("Rate limits", rate_limits_text(summary).removeprefix("rate limits: ")))
    if summary.failures_by_blame:
        rows.append(("Failures by blame", blame_text(summary).removeprefix("failed conversations by blame: ")))
    if summary.judge_repeated:
        rows.append(("Judge agreement", judge_agreement_text(summary).removeprefix("judge repeats: ")))
    if summary.unpriced_models:
        rows.append(("Unpriced models", f"{', '.join(summary.unpriced_models)} (counted at $0)"))
    if summary.price_sources:
        rows.append(("Prices", sources_text(summary.price_sources)))
    judge = local_judge_text(summary)
    if judge is not None:  # the verdicts' worth, first
        rows.insert(0, ("Judge", judge[0].upper() + judge[1:] + "."))
    if summary.known_failures:
        rows.append(("Known failures", f"{len(summary.known_failures)} (failed on the baseline too; xfailed under "
                                       f"--llmsim-gate=regressions): {', '.join(summary.known_failures)}"))
    body = "".join(
        f"<tr><th>{_e(name)}</th><td>{_distribution(summary) if value is None else _e(value)}</td></tr>"
        for name, value in rows
    )
    gate_html = "".join(f'<div class="llmsim-gate-missed">Gate missed: {_e(line)}</div>' for line in missed)
    unchecked = gates_unchecked_reason(summary)
    if gates.any and not missed:
        gate_html = ('<div class="llmsim-gate-ok">All suite gates met.</div>' if unchecked is None else
                     f'<div class="llmsim-incomplete">Suite gates not checked: {_e(unchecked)}.</div>')
    incomplete = incomplete_text(summary)
    if incomplete is not None:
        gate_html = (f'<div class="llmsim-incomplete">Partial run ({incomplete_cause(summary)}): '
                     f'{_e(incomplete)}.</div>{gate_html}')
    return (f'<div class="llmsim-summary"><h3>LLM scenarios (pytest-llmsim)</h3><table class="llmsim-totals">'
            f"{body}</table>{gate_html}</div>")


# -- a scenario compared with the baseline -------------------------------------------------------------------
TurnChange = Literal["equal", "changed", "added", "removed"]


@dataclass(frozen=True)
class TurnPair:
    """One row of a turn-level diff: a baseline turn and/or a turn of this run (None: absent on that side),
    numbered from 1 in their own transcript."""

    change: TurnChange
    old_number: int | None
    old: Mapping[str, Any] | None
    new_number: int | None
    new: Mapping[str, Any] | None


def diff_turns(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[TurnPair]:
    """The turns of two transcripts paired by ``difflib.SequenceMatcher`` over ``turn_key``: equal turns, a
    replaced stretch as changed pairs (the longer side's surplus as removed or added), removed and added turns."""
    matcher = SequenceMatcher(None, [turn_key(t) for t in old], [turn_key(t) for t in new], autojunk=False)
    pairs: list[TurnPair] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs.extend(TurnPair("equal", i1 + k + 1, old[i1 + k], j1 + k + 1, new[j1 + k]) for k in range(i2 - i1))
            continue
        common = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        pairs.extend(TurnPair("changed", i1 + k + 1, old[i1 + k], j1 + k + 1, new[j1 + k]) for k in range(common))
        pairs.extend(TurnPair("removed", i + 1, old[i], None, None) for i in range(i1 + common, i2))
        pairs.extend(TurnPair("added", None, None, j + 1, new[j]) for j in range(j1 + common, j2))
    return pairs


def _diff_cell(turn: Mapping[str, Any] | None, side: str) -> str:
    if turn is None:
        return f'<td class="llmsim-diff-side llmsim-diff-{side}"></td>'
    role = "client" if turn.get("role") == "client" else "agent"
    return (f'<td class="llmsim-diff-side llmsim-diff-{side}"><div class="llmsim-who">{SPEAKERS[role]}</div>'
            f'<div class="llmsim-diff-text">{turn_body_html(turn)}</div></td>')


def _score_text(score: float | None) -> str:
    return "-" if score is None else str(score)


def baseline_diff_html(delta: ScenarioDelta) -> str:
    """A changed scenario's baseline and current transcripts side by side (baseline | this run), turn by turn,
    each row marked equal, changed, removed or added (``diff_turns``), under the score and status old -> new
    and both judges' comments. Every value is escaped."""
    old_status = "not in the baseline" if delta.old_status is None else delta.old_status
    score = f"score {_score_text(delta.old_score)} → {_score_text(delta.new_score)}"
    if delta.score_delta is not None:
        score += f" ({delta.score_delta:+g})"
    status = delta.new_status if delta.old_status == delta.new_status else f"{old_status} → {delta.new_status}"
    pills = [f'<span class="llmsim-pill">{_e(score)}</span>', f'<span class="llmsim-pill">{_e(status)}</span>']
    if delta.regressed:
        pills.append('<span class="llmsim-pill llmsim-status-failed">regressed</span>')
    elif delta.newly_passing:
        pills.append('<span class="llmsim-pill">newly passing</span>')
    if delta.turns_delta:
        pills.append(f'<span class="llmsim-pill">turns {delta.turns_delta:+d}</span>')
    parts = [f'<div class="llmsim-card llmsim-diff"><div class="llmsim-meta"><strong>Compared with the baseline'
             f'</strong>{"".join(pills)}</div>']
    for label, comment in (("Judge (baseline)", delta.old_comment), ("Judge (this run)", delta.new_comment)):
        if comment:
            parts.append(f'<div class="llmsim-judge"><strong>{label}:</strong> {_e(comment)}</div>')
    rows = []
    for pair in diff_turns(delta.old_transcript, delta.new_transcript):
        old_number = "" if pair.old_number is None else f"#{pair.old_number}"
        new_number = "" if pair.new_number is None else f"#{pair.new_number}"
        mark = "" if pair.change == "equal" else f'<div class="llmsim-diff-mark">{pair.change}</div>'
        rows.append(f'<tr class="llmsim-diff-{pair.change}" data-change="{pair.change}">'
                    f'<td class="llmsim-diff-num">{old_number}{mark}</td>{_diff_cell(pair.old, "old")}'
                    f'<td class="llmsim-diff-num">{new_number}</td>{_diff_cell(pair.new, "new")}</tr>')
    if rows:
        parts.append('<table class="llmsim-diff-table"><thead><tr><th class="llmsim-diff-num"></th><th>Baseline</th>'
                     f'<th class="llmsim-diff-num"></th><th>This run</th></tr></thead><tbody>{"".join(rows)}'
                     "</tbody></table>")
    else:
        parts.append('<div class="llmsim-end">No turns in either run.</div>')
    parts.append("</div>")
    return "".join(parts)
