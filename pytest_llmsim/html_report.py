"""HTML fragments for the pytest-html report: a scenario's chat and the run summary (no pytest, no pytest-html).

pytest-html inserts these fragments as raw HTML, so every value that came from a model, a scenario file or
the user is passed through ``html.escape`` here: a reply containing ``<script>`` shows as text, and so do a
tool call's name, arguments and result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .results import ScenarioRecord, ScenarioResult, tool_call_parts, turn_tool_calls
from .summary import (
    Gates,
    RunSummary,
    gates_unchecked_reason,
    incomplete_cause,
    incomplete_text,
    outcome_counts,
    pass_rate_text,
)

SPEAKERS = {"client": "Customer", "agent": "Agent"}

STYLE = """<style>
.llmsim-card{font-family:Helvetica,Arial,sans-serif;font-size:13px;color:#222;margin:6px 0 10px;max-width:980px}
.llmsim-meta{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:8px;align-items:center}
.llmsim-pill{background:#eef1f4;border:1px solid #d5dbe1;border-radius:10px;padding:2px 8px;color:#333}
.llmsim-score{font-weight:bold;border-radius:10px;padding:2px 10px;color:#fff}
.llmsim-score-1{background:#c9302c}.llmsim-score-2{background:#d58512}.llmsim-score-3{background:#449d44}
.llmsim-score-none{background:#777}
.llmsim-status-failed,.llmsim-status-error{border-color:#c9302c;color:#a94442;font-weight:bold}
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
.llmsim-tool{font-family:monospace;font-size:11px;background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;
  padding:3px 6px;margin:2px 0 4px;white-space:pre-wrap;word-break:break-word;text-align:left}
.llmsim-tool-label{color:#777}.llmsim-tool-name{font-weight:bold}.llmsim-tool-result{color:#2b6a2b}
.llmsim-end{color:#555;font-style:italic;border-top:1px dashed #ccc;padding-top:4px}
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
</style>"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def usd(value: float) -> str:
    return f"${value:.6f}"


def cache_state(result: ScenarioResult) -> str:
    live, cached = result.live_calls, result.cached_calls
    if cached and not live:
        return "replayed from the cache"
    if cached:
        return f"partly replayed ({cached} of {live + cached} calls from the cache)"
    return "live" if live else "no LLM calls"


def score_badge(result: ScenarioResult) -> str:
    score = result.score
    kind = score if score in (1, 2, 3) else "none"
    shown = "no score" if score is None else f"score {score}"
    suffix = f" / min {_e(result.min_score)}" if result.min_score is not None else ""
    return f'<span class="llmsim-score llmsim-score-{kind}">{_e(shown)}{suffix}</span>'


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


def scenario_html(record: ScenarioRecord) -> str:
    """The chat of one scenario run with its verdict, tokens, cost, duration and cache state."""
    result = record.result
    status = str(result.status)
    shown = status if str(record.outcome) == status else f"{status} ({record.outcome})"
    pills = [
        f'<span class="llmsim-pill llmsim-status-{_e(status)}">{_e(shown)}</span>',
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
    parts = [f'<div class="llmsim-card"><div class="llmsim-meta">{score_badge(result)}{"".join(pills)}</div>']
    if result.comment:
        parts.append(f'<div class="llmsim-judge"><strong>Judge:</strong> {_e(result.comment)}</div>')
    if result.error_message:
        parts.append(f'<div class="llmsim-error">{_e(result.error_kind or "error")}: '
                     f'{_e(result.error_message)}</div>')
    if result.transcript:
        parts.append('<div class="llmsim-chat">')
        for number, turn in enumerate(result.transcript, 1):
            role = "client" if turn.get("role") == "client" else "agent"
            tags = []
            if turn.get("scripted"):
                tags.append("scripted")
            if turn.get("cached"):
                tags.append("replayed")
            tag_html = "".join(f'<span class="llmsim-tag">{t}</span>' for t in tags)
            # No whitespace between the blocks: the bubble keeps its text's line breaks (pre-wrap).
            tools = "".join(tool_call_html(call) for call in turn_tool_calls(turn))
            parts.append(f'<div class="llmsim-turn llmsim-{role}"><div class="llmsim-who">#{number} '
                         f'{SPEAKERS[role]}{tag_html}</div><div class="llmsim-bubble">{tools}'
                         f'{_e(turn.get("text"))}</div></div>')
        parts.append("</div>")
    if result.ended_by:
        parts.append(f'<div class="llmsim-end">Call ended by {_e(result.ended_by)}: '
                     f'{_e(result.end_reason)}</div>')
    parts.append("</div>")
    return "".join(parts)


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
        ("LLM calls", f"{summary.total_requests} live · {summary.replayed_requests} replayed from the cache"),
        ("Cost", f"{usd(summary.total_cost_usd)} spent · {usd(summary.saved_cost_usd)} saved by replays"),
    ]
    if summary.unpriced_models:
        rows.append(("Unpriced models", f"{', '.join(summary.unpriced_models)} (counted at $0)"))
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
