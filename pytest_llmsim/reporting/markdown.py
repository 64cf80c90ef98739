"""A GitHub-flavoured markdown summary of a run, for a pull request or a job's step summary (no pytest).

Why one module: it is one renderer with one escaping discipline; the escapers and every section that uses them stay
side by side, so no text reaches the page without passing one of them.

``render_markdown`` writes, in order: a title with the verdict, the totals, the suite gates, the known failures
(``--llmsim-gate=regressions``), (with a baseline) the changes since the baseline as a table, regressions first,
and then collapsible transcripts of the failed and errored scenarios and of those whose conversation changed since
the baseline.

Safety: GitHub renders HTML inside markdown, and everything a model, a scenario file or the user wrote may hold
``<script>``, ``|``, backticks or ``</details>``. Such text appears in three places only, each escaped for it:

* inline markdown (table cells, list items): ``md_text`` turns ``&``, ``<``, ``>`` into entities, escapes the
  markdown punctuation (``|`` included, so a cell cannot split) with a backslash and joins lines;
* the ``<summary>`` line of a ``<details>`` block (raw HTML): ``html_text``, entities and one line;
* transcripts, judges' comments and errors: fenced code blocks whose fence is longer than any run of backticks
  in the text (``fenced``), so nothing inside can close it; inside a code block nothing is markup, so a
  ``</details>`` or ``<img>`` shows as text, and GitHub links no ``@mention`` or ``#123`` there.

Size: a step summary may not exceed 1 MiB. Past ``limit_bytes`` (UTF-8), transcripts give way first: the
longest are replaced by a one-line stub, then the later scenarios are left out, and a note says what was left
out. The title, totals, gates and the changes table always stay; only a table that alone exceeds the limit
loses its last rows (the least interesting: the table is sorted regressions first), with a note.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmsim.llm.pricing import sources_text
from pytest_llmsim.model.results import Outcome, ScenarioRecord, spoken_lines
from pytest_llmsim.reporting.exports import atomic_write_text
from pytest_llmsim.reporting.html import TurnPair, diff_turns
from pytest_llmsim.reporting.summary import (
    Gates,
    RunSummary,
    gates_unchecked_reason,
    incomplete_cause,
    incomplete_text,
    local_judge_baseline_text,
    local_judge_text,
    outcome_counts,
    pass_rate_text,
    plural,
)
from pytest_llmsim.reporting.terminal import (
    SPEAKERS,
    blame_text,
    failed_metric_names,
    judge_agreement_text,
    record_text,
    trials_text,
)

if TYPE_CHECKING:  # only for annotations: no import-time dependency on the baseline comparison
    from pytest_llmsim.reporting.baseline import Comparison, ScenarioDelta

DEFAULT_LIMIT_BYTES = 1_000_000  # GitHub's step summary limit is 1 MiB (1,048,576 bytes): keep a margin
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
CELL_CHARS = 200  # a table cell (a scenario's name) longer than this is shortened
DIFF_CONTEXT = 2  # unchanged turns kept around each change in a markdown diff
NOTE_NAMES = 8  # names listed in a truncation note, each shortened to NOTE_NAME_CHARS
NOTE_NAME_CHARS = 80
# Bytes kept free for the transcripts' heading and truncation note: two lists of names, each name at most 5 bytes
# a character once escaped, and the note's own words.
NOTE_RESERVE = 2 * NOTE_NAMES * (5 * NOTE_NAME_CHARS + 4) + 1024

_MD_PUNCTUATION = frozenset("\\`*_[]{}()#+-.!|~$:@")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_LINE_BREAKS = re.compile(r"\r\n|\r|\n|\u2028|\u2029")
_FAILED_OUTCOMES = (Outcome.FAILED, Outcome.ERROR)


# -- escaping ------------------------------------------------------------------------------------------------
def md_text(value: Any) -> str:
    """``value`` as inline markdown that shows exactly as written: HTML special characters as entities,
    markdown punctuation (``|`` included) backslash-escaped, line breaks as spaces (safe in a table cell)."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
    return "".join(_HTML_ENTITIES.get(ch) or (f"\\{ch}" if ch in _MD_PUNCTUATION else ch) for ch in text)


def html_text(value: Any) -> str:
    """``value`` for raw HTML on one line (the ``<summary>`` of a ``<details>`` block): entities, no line break
    (a blank line would end the HTML block and let the rest be read as markdown)."""
    return escape(_LINE_BREAKS.sub(" ", "" if value is None else str(value)), quote=True)


def fenced(text: str, info: str = "text") -> str:
    """``text`` in a fenced code block whose backtick fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _usd(value: float) -> str:
    """A cost as a code span: ``$`` in plain text may start GitHub's math."""
    return f"`${value:.6f}`"


def _signed_usd(value: float) -> str:
    return f"`{'-' if value < 0 else '+'}${abs(value):.6f}`"


# -- title, totals, gates ------------------------------------------------------------------------------------
def verdict_title(summary: RunSummary, missed: Sequence[str], regressed: int = 0) -> str:
    """The title line: ``## ✅ LLM scenarios: all passed``, ``## ❌ LLM scenarios: 2 failed, suite gates
    missed``, ``## ⚠️ LLM scenarios: no scenario ran``..."""
    problems = []
    if summary.failed_scenarios:
        problems.append(f"{summary.failed_scenarios} failed")
    if summary.errored_scenarios:
        problems.append(f"{summary.errored_scenarios} errored")
    if missed:
        problems.append("suite gates missed")
    notes = []
    if not summary.complete:
        notes.append(f"run {incomplete_cause(summary)}")
    if regressed:
        notes.append(f"{regressed} regressed since the baseline")
    if summary.known_failures:
        notes.append(f"{len(summary.known_failures)} known failure{'' if len(summary.known_failures) == 1 else 's'}")
    if problems:
        return f"## ❌ LLM scenarios: {', '.join([*problems, *notes])}"
    if summary.total_scenarios == 0:
        return f"## ⚠️ LLM scenarios: {', '.join(['no scenario ran', *notes])}"
    if not summary.complete:
        return f"## ⚠️ LLM scenarios: {', '.join(['no failure in the scenarios that finished', *notes])}"
    return f"## ✅ LLM scenarios: {', '.join(['no new failures' if summary.known_failures else 'all passed', *notes])}"


def known_failures_markdown(summary: RunSummary, deltas: Sequence[ScenarioDelta]) -> str:
    """The known failures (``--llmsim-gate=regressions``), listed apart from the failures of this run; "" when
    there are none."""
    if not summary.known_failures:
        return ""
    by_nodeid = {d.nodeid: d for d in deltas}
    lines = ["**Known failures** (failed on the baseline too; they do not fail the run under "
             "`--llmsim-gate=regressions`, and are counted as xfailed)", ""]
    for nodeid in summary.known_failures:
        delta = by_nodeid.get(nodeid)
        score = f": score {md_text(_score_arrow(delta.old_score, delta.new_score))}" if delta is not None else ""
        lines.append(f"- {md_text(_shorten(nodeid, CELL_CHARS))}{score}")
    return "\n".join(lines)


def totals_markdown(summary: RunSummary) -> str:
    """The run totals as a list: counts (as ``outcome_counts`` words them), pass rate, scores, tokens, cost."""
    stats = summary.score_statistics
    if stats.mean is None:
        scores = "no scenario was scored"
    else:
        distribution = ", ".join(f"{key[-1]}: {count}" for key, count in summary.score_distribution.items())
        scores = (f"mean **{stats.mean:g}**, median {stats.median:g}, std {stats.std:g}, min {stats.min}, "
                  f"max {stats.max} (distribution {distribution})")
    lines = [
        f"- **Scenarios:** {summary.total_scenarios} ({outcome_counts(summary)})",
        f"- **Pass rate:** {pass_rate_text(summary)}",
        f"- **Score:** {scores}",
        f"- **Tokens:** {summary.total_tokens} live + {summary.replayed_tokens} replayed "
        f"(prompt {summary.prompt_tokens}, completion {summary.completion_tokens})",
        f"- **LLM calls:** {summary.total_requests} live, {summary.replayed_requests} replayed (recordings or cache)",
        f"- **Cost:** {_usd(summary.total_cost_usd)} spent on live calls, {_usd(summary.saved_cost_usd)} saved "
        f"by replays",
    ]
    if summary.max_trials > 1:
        lines.append(f"- **Trials:** {md_text(trials_text(summary).removeprefix('trials: '))}")
    if summary.failures_by_blame:
        lines.append(f"- **Failures by blame:** "
                     f"{md_text(blame_text(summary).removeprefix('failed conversations by blame: '))}")
    if summary.judge_repeated:
        lines.append(f"- **Judge agreement:** "
                     f"{md_text(judge_agreement_text(summary).removeprefix('judge repeats: '))}")
    if summary.unpriced_models:
        lines.append(f"- **Unpriced models** (counted at `$0`): {md_text(', '.join(summary.unpriced_models))}")
    if summary.price_sources:
        lines.append(f"- **Prices:** {md_text(sources_text(summary.price_sources))}")
    judge = local_judge_text(summary)
    if judge is not None:  # the verdicts' worth, first
        lines.insert(0, f"> ⚠️ **Judge:** {md_text(judge[0].upper() + judge[1:])}.\n")
    incomplete = incomplete_text(summary)
    if incomplete is not None:
        lines.insert(0, f"> **Partial run ({incomplete_cause(summary)}):** {md_text(incomplete)}.\n")
    return "\n".join(lines)


def gates_markdown(summary: RunSummary, gates: Gates, missed: Sequence[str]) -> str:
    """The suite gates: one line per missed gate, all met, not checked (and why), or none set."""
    set_gates = []
    if gates.min_mean_score is not None:
        set_gates.append(f"min mean score {gates.min_mean_score:g}")
    if gates.min_pass_rate is not None:
        set_gates.append(f"min pass rate {gates.min_pass_rate:.1%}")
    if gates.max_cost_usd is not None:
        set_gates.append(f"max cost `${gates.max_cost_usd:g}`")
    lines = ["**Suite gates**", ""]
    if missed:
        lines.extend(f"- ❌ Gate missed: {md_text(line)}" for line in missed)
    elif not gates.any:
        lines.append("- No suite gates set.")
    else:
        unchecked = gates_unchecked_reason(summary)
        if unchecked is None:
            lines.append(f"- ✅ All suite gates met ({', '.join(set_gates)}).")
        else:
            lines.append(f"- ⚠️ Suite gates not checked: {md_text(unchecked)}.")
    return "\n".join(lines)


def changed_markdown(records: Sequence[ScenarioRecord]) -> list[str]:
    """Record mode ``changed``: how many conversations replayed unchanged, which changed and were judged live (with
    their live cost) and which could not be judged; nothing in other record modes. (Names are capped like a
    truncation note's: the table and transcripts below name every changed scenario.)"""
    from pytest_llmsim.replay.recordings import changed_conversations

    changed = changed_conversations(records)
    if changed is None:
        return []
    mark = "❌" if changed.unjudged else "✅"
    return [f"**Changed conversations** (`--llmsim-record=changed`)\n\n- {mark} {changed.text(_names, NOTE_NAMES)}"]


# -- changes since the baseline ------------------------------------------------------------------------------
def _changed(delta: ScenarioDelta) -> bool:
    return (delta.regressed or delta.newly_passing or delta.transcript_changed or delta.old_status is None
            or delta.old_status != delta.new_status or bool(delta.score_delta))


def change_label(delta: ScenarioDelta) -> str:
    """``regressed``, ``improved``, ``new`` or ``changed``: how the changes table names the row."""
    if delta.regressed:
        return "regressed"
    if delta.old_status is None:
        return "new"
    if delta.newly_passing or (delta.score_delta or 0) > 0:
        return "improved"
    return "changed"


_LABEL_MARKS = {"regressed": "🔻 regressed", "improved": "🟢 improved", "new": "🆕 new", "changed": "✏️ changed"}


def delta_sort_key(delta: ScenarioDelta) -> tuple[int, float, str]:
    """Regressions first (newly failing, then the largest score drops), then improvements, other changes and
    new scenarios; by node id within a group."""
    if delta.newly_failing:
        group = 0
    elif delta.regressed:
        group = 1
    else:
        group = {"improved": 2, "changed": 3, "new": 4}[change_label(delta)]
    score = delta.score_delta or 0
    return group, score if group < 2 else -score, delta.nodeid


def _score_arrow(old: float | int | None, new: float | int | None) -> str:
    return f"{'–' if old is None else old} → {'–' if new is None else new}"


def _status_change(delta: ScenarioDelta) -> str:
    if delta.old_status is None:
        return f"new → {md_text(delta.new_status)}"
    if delta.old_status == delta.new_status:
        return md_text(delta.new_status)
    return f"**{md_text(delta.old_status)} → {md_text(delta.new_status)}**"


def delta_row(delta: ScenarioDelta, mark: str = "") -> str:
    """One row of the changes table; ``mark``: what the statistics say of the change (bold when significant)."""
    label = _LABEL_MARKS[change_label(delta)]
    if mark:
        label += f" **({md_text(mark)})**" if mark.startswith("significant") else f" ({md_text(mark)})"
    cells = [
        md_text(_shorten(delta.nodeid, CELL_CHARS)),
        label,
        md_text(_score_arrow(delta.old_score, delta.new_score)),
        "" if delta.score_delta is None else f"{delta.score_delta:+g}",
        _status_change(delta),
        "" if delta.turns_delta is None else f"{delta.turns_delta:+d}",
        "" if delta.cost_delta_usd is None else _signed_usd(delta.cost_delta_usd),
        "" if delta.old_status is None else "changed" if delta.transcript_changed else "same",
    ]
    return f"| {' | '.join(cells)} |"


TABLE_HEADER = ("| Scenario | Change | Score | Δ score | Status | Δ turns | Δ cost | Transcript |\n"
                "|---|---|---|---|---|---|---|---|")


def changes_intro(deltas: Sequence[ScenarioDelta], *, baseline_label: str, new: Sequence[str],
                  missing: Sequence[str], mean_score_delta: float | None, statistics: str = "") -> str:
    """The heading and counts above the changes table."""
    title = "### Changes since the baseline"
    if baseline_label:
        title += f" ({md_text(baseline_label)})"
    labels = [change_label(d) for d in deltas if _changed(d)]
    counts = [f"{labels.count('regressed')} regressed", f"{labels.count('improved')} improved",
              f"{labels.count('changed')} changed", f"{len(deltas) - len(labels)} unchanged"]
    new_count = len(new) if new else labels.count("new")
    counts.append(f"{new_count} new")
    counts.append(f"{len(missing)} missing (in the baseline, not in this run)")
    lines = [title, "", f"Scenarios: {', '.join(counts)}."]
    if mean_score_delta is not None:
        lines.append(f"Mean score delta: **{mean_score_delta:+.4g}**.")
    if statistics:
        lines.append(f"Statistics: {md_text(statistics)}.")
    if missing:
        shown = ", ".join(md_text(_shorten(name, NOTE_NAME_CHARS)) for name in list(missing)[:NOTE_NAMES])
        more = f" and {len(missing) - NOTE_NAMES} more" if len(missing) > NOTE_NAMES else ""
        lines.append(f"Missing: {shown}{more}.")
    return "\n".join(lines)


# -- transcripts ---------------------------------------------------------------------------------------------
def _turn_lines(marker: str, number: int | None, turn: Mapping[str, Any]) -> list[str]:
    """A turn as diff lines, one per speaker of a multi-agent turn (``spoken_lines``)."""
    lines: list[str] = []
    for speaker, said in spoken_lines(turn, SPEAKERS["client"], SPEAKERS["agent"]):
        text = f"{'' if number is None else number}. {speaker}: {said}"
        lines.extend(f"{marker} {line}" for line in _LINE_BREAKS.split(text))
    return lines


def diff_lines(pairs: Sequence[TurnPair], *, context: int = DIFF_CONTEXT) -> list[str]:
    """A turn-level diff as ``diff`` lines (``-`` baseline, ``+`` this run, `` `` unchanged), each stretch of
    changes with ``context`` unchanged turns around it; longer unchanged stretches as one ``@@`` line."""
    lines: list[str] = []
    index = 0
    while index < len(pairs):
        if pairs[index].change == "equal":
            end = index
            while end < len(pairs) and pairs[end].change == "equal":
                end += 1
            run = pairs[index:end]
            head = run[:context] if index > 0 else []
            tail = run[-context:] if end < len(pairs) and context else []
            if len(run) > len(head) + len(tail):
                kept = [*head, *tail]
                skipped = len(run) - len(kept)
                lines.extend(line for pair in head for line in _turn_lines(" ", pair.new_number, pair.new or {}))
                lines.append(f"@@ {skipped} unchanged turn{'s' if skipped != 1 else ''} @@")
                lines.extend(line for pair in tail for line in _turn_lines(" ", pair.new_number, pair.new or {}))
            else:
                lines.extend(line for pair in run for line in _turn_lines(" ", pair.new_number, pair.new or {}))
            index = end
            continue
        end = index
        while end < len(pairs) and pairs[end].change != "equal":
            end += 1
        block = pairs[index:end]
        lines.extend(line for pair in block if pair.old is not None
                     for line in _turn_lines("-", pair.old_number, pair.old))
        lines.extend(line for pair in block if pair.new is not None
                     for line in _turn_lines("+", pair.new_number, pair.new))
        index = end
    return lines


def _details(summary_html: str, body: str) -> str:
    return f"<details><summary>{summary_html}</summary>\n\n{body}\n\n</details>\n\n"


def _record_summary(record: ScenarioRecord, esc: Callable[[Any], str] = html_text) -> str:
    """A failed record in one line: for a ``<summary>`` (``html_text``) or a markdown list item (``md_text``)."""
    result = record.result
    score = "no score" if result.score is None else f"score {result.score}"
    if result.min_score is not None:
        score += f" (min {result.min_score})"
    verdict = "errored" if record.outcome == Outcome.ERROR else "failed"
    kind = f" ({record.error_kind})" if record.outcome == Outcome.ERROR and record.error_kind else ""
    failed = failed_metric_names(result)
    metrics = "" if failed in ([], ["judge"]) else f" · failed metrics: {esc(_shorten(', '.join(failed), CELL_CHARS))}"
    return (f"❌ {verdict}{esc(kind)}: <code>{esc(_shorten(record.nodeid, CELL_CHARS))}</code> · "
            f"{esc(score)} · {result.total_turns} turns{metrics}")


def _diff_body(delta: ScenarioDelta) -> str:
    lines = diff_lines(diff_turns(delta.old_transcript, delta.new_transcript))
    return fenced("\n".join(lines) if lines else "(no turns in either run)", "diff")


def _comments(delta: ScenarioDelta) -> str:
    lines = []
    if delta.old_comment:
        lines.append(f"judge (baseline): {delta.old_comment}")
    if delta.new_comment:
        lines.append(f"judge (this run): {delta.new_comment}")
    return fenced("\n".join(lines)) + "\n\n" if lines else ""


@dataclass(frozen=True)
class _Block:
    nodeid: str
    full: str
    stub: str
    turns: int


def record_block(record: ScenarioRecord, delta: ScenarioDelta | None) -> str:
    """A failed or errored scenario: verdict, one line per metric (``metric rules: 0.5 FAILED - ...``, as
    ``terminal_report.record_text`` writes them), judge's comment, error and the whole transcript (and, when its
    transcript changed since the baseline, the turn-level diff)."""
    body = fenced(record_text(record).rstrip("\n"))
    if delta is not None and delta.transcript_changed:
        body += (f"\n\nChanged since the baseline (score {md_text(_score_arrow(delta.old_score, delta.new_score))})"
                 ":\n\n"
                 f"{_diff_body(delta)}")
    return _details(_record_summary(record), body)


def _delta_summary(delta: ScenarioDelta, esc: Callable[[Any], str] = html_text) -> str:
    """A changed scenario in one line: for a ``<summary>`` (``html_text``) or a markdown list item (``md_text``)."""
    mark = _LABEL_MARKS[change_label(delta)]
    status = delta.new_status if delta.old_status == delta.new_status else \
        f"{delta.old_status or 'new'} → {delta.new_status}"
    return (f"{mark}: <code>{esc(_shorten(delta.nodeid, CELL_CHARS))}</code> · score "
            f"{esc(_score_arrow(delta.old_score, delta.new_score))} · {esc(status)} · transcript changed")


def delta_block(delta: ScenarioDelta) -> str:
    """A scenario whose transcript changed since the baseline: both judges' comments and the turn-level diff."""
    return _details(_delta_summary(delta), _comments(delta) + _diff_body(delta))


def _stub(summary_md: str, turns: int, size: int) -> str:
    return f"- {summary_md}: transcript left out ({turns} turns, {size / 1000:.0f} kB) to stay under the size limit\n"


def _blocks(records: Sequence[ScenarioRecord], deltas: Sequence[ScenarioDelta]) -> list[_Block]:
    by_nodeid = {d.nodeid: d for d in deltas}
    blocks = []
    shown = set()
    for record in records:
        if record.outcome not in _FAILED_OUTCOMES:
            continue
        shown.add(record.nodeid)
        full = record_block(record, by_nodeid.get(record.nodeid))
        turns = record.result.total_turns
        blocks.append(_Block(record.nodeid, full, _stub(_record_summary(record, md_text), turns, _size(full)),
                             turns))
    for delta in sorted(deltas, key=delta_sort_key):  # a new scenario has nothing to compare: only in the table
        if not delta.transcript_changed or delta.old_status is None or delta.nodeid in shown:
            continue
        full = delta_block(delta)
        turns = len(delta.new_transcript)
        blocks.append(_Block(delta.nodeid, full, _stub(_delta_summary(delta, md_text), turns, _size(full)),
                             turns))
    return blocks


def _names(nodeids: Iterable[str]) -> str:
    names = list(nodeids)
    shown = ", ".join(md_text(_shorten(n, NOTE_NAME_CHARS)) for n in names[:NOTE_NAMES])
    return shown + (f" and {len(names) - NOTE_NAMES} more" if len(names) > NOTE_NAMES else "")


def _fit_blocks(blocks: Sequence[_Block], room: int, limit_bytes: int) -> tuple[str, str]:
    """The transcript blocks that fit in ``room`` bytes, and the note saying what was left out ("" when all fit
    whole). When they do not, ``NOTE_RESERVE`` bytes of the room are kept for the note, the longest blocks
    become stubs and then the last ones are left out."""
    sizes = [_size(b.full) for b in blocks]
    stub_sizes = [_size(b.stub) + 1 for b in blocks]  # + the blank line that may end a run of stubs
    full = [True] * len(blocks)
    total = sum(sizes)
    budget = room if total <= room else max(0, room - NOTE_RESERVE)
    if total > budget:
        for i in sorted(range(len(blocks)), key=lambda i: -sizes[i]):
            if total <= budget:
                break
            if stub_sizes[i] < sizes[i]:
                full[i] = False
                total += stub_sizes[i] - sizes[i]
    keep = len(blocks)
    while keep and total > budget:
        keep -= 1
        total -= sizes[keep] if full[keep] else stub_sizes[keep]
    stubbed = [b.nodeid for i, b in enumerate(blocks[:keep]) if not full[i]]
    dropped = [b.nodeid for b in blocks[keep:]]
    parts: list[str] = []
    for i, block in enumerate(blocks[:keep]):  # consecutive stubs make one list; a blank line ends it
        if full[i] and parts and not full[i - 1]:
            parts.append("\n")
        parts.append(block.full if full[i] else block.stub)
    if keep and not full[keep - 1]:
        parts.append("\n")
    text = "".join(parts)
    if not stubbed and not dropped:
        return text, ""
    said = []
    if stubbed:
        said.append(f"the transcripts of {plural(len(stubbed), 'scenario')}, the longest (listed below with their "
                    f"sizes): {_names(stubbed)}")
    if dropped:
        said.append(f"the last {plural(len(dropped), 'scenario')} entirely: {_names(dropped)}")
    note = (f"> **Left out to keep this summary under {limit_bytes:,} bytes:** {'; '.join(said)}. The full "
            "transcripts are in the HTML report and the JSON export (`--llmsim-results`).\n\n")
    return text, note


def _fit_table(head: str, rows: Sequence[str], tail: str, budget: int) -> tuple[str, str]:
    """The changes table (its rows as fit in ``budget`` bytes with ``head`` and ``tail`` around them) and the
    note for rows left out ("" when all fit)."""
    table = "\n".join([TABLE_HEADER, *rows])
    if _size(head) + _size(table) + _size(tail) <= budget:
        return table, ""
    room = budget - _size(head) - _size(tail) - _size(TABLE_HEADER) - 200  # 200: the note below
    kept = 0
    for row in rows:
        room -= _size(row) + 1
        if room < 0:
            break
        kept += 1
    note = (f"\n\n> **{len(rows) - kept} more rows left out** of this table to stay under the size limit "
            "(the table is sorted regressions first).")
    return "\n".join([TABLE_HEADER, *rows[:kept]]), note


def render_markdown(summary: RunSummary, gates: Gates, missed: Sequence[str], records: Sequence[ScenarioRecord],
                    deltas: Sequence[ScenarioDelta] | None, *, baseline_label: str = "", new: Sequence[str] = (),
                    missing: Sequence[str] = (), mean_score_delta: float | None = None,
                    limit_bytes: int = DEFAULT_LIMIT_BYTES, statistics: str = "",
                    marks: Mapping[str, str] | None = None, flaky: Sequence[str] = (),
                    flaky_title: str = "Flaky scenarios") -> str:
    """The run as GitHub-flavoured markdown: verdict title, totals, gates, changes since the baseline (when
    ``deltas`` is not None) and collapsible transcripts, in at most ``limit_bytes`` UTF-8 bytes (unless the
    title, totals and gates alone are longer). See the module docstring for escaping and truncation.

    ``statistics``: the comparison's one statistics line; ``marks``: node id -> what the statistics say of that
    scenario's change (significant, noisy); ``flaky``: one line per flaky scenario of the history."""
    regressed = sum(1 for d in deltas or () if d.regressed)
    blocks = _blocks(records, deltas or ())
    known = known_failures_markdown(summary, deltas or ())
    head = "\n\n".join([verdict_title(summary, missed, regressed), totals_markdown(summary),
                        gates_markdown(summary, gates, missed), *([known] if known else []),
                        *changed_markdown(records)]) + "\n\n"
    table = ""
    if deltas is not None:
        changed = sorted((d for d in deltas if _changed(d)), key=delta_sort_key)
        intro = changes_intro(deltas, baseline_label=baseline_label, new=new, missing=missing,
                              mean_score_delta=mean_score_delta, statistics=statistics) + "\n\n"
        caveat = local_judge_baseline_text(summary)
        if caveat is not None:
            intro += f"> ⚠️ {md_text(caveat[0].upper() + caveat[1:])}.\n\n"
        if changed:
            # With transcripts to show, a full table leaves room for their heading and truncation note.
            rows, note = _fit_table(head + intro, [delta_row(d, (marks or {}).get(d.nodeid, "")) for d in changed],
                                    "\n\n",
                                    limit_bytes - (NOTE_RESERVE + 32 if blocks else 0))
            table = intro + rows + note + "\n\n"
        else:
            table = intro + "No scenario changed since the baseline.\n\n"
    if flaky:
        table += f"### {md_text(flaky_title)}\n\n" + "".join(f"- {md_text(line)}\n" for line in flaky) + "\n"
    document = head + table
    if blocks:
        title = "### Transcripts\n\n"
        text, note = _fit_blocks(blocks, limit_bytes - _size(document) - _size(title), limit_bytes)
        document += title + note + text
    return document.rstrip("\n") + "\n"


# -- writing -------------------------------------------------------------------------------------------------
def run_markdown(summary: RunSummary, gates: Gates, missed: Sequence[str], records: Sequence[ScenarioRecord],
                 comparison: Comparison | None, *, statistics: str = "", marks: Mapping[str, str] | None = None,
                 flaky: Sequence[str] = (), flaky_title: str = "Flaky scenarios") -> str:
    """``render_markdown`` of a run, with its baseline comparison if any (the pytest run's and ``llmsim merge``'s)
    and, from the run history, the statistics line, the significance marks and the flaky scenarios."""
    return render_markdown(
        summary, gates, missed, records, comparison.deltas if comparison is not None else None,
        baseline_label=comparison.baseline_label if comparison is not None else "",
        new=comparison.new if comparison is not None else (),
        missing=comparison.missing if comparison is not None else (),
        mean_score_delta=comparison.mean_score_delta if comparison is not None else None,
        statistics=statistics, marks=marks, flaky=flaky, flaky_title=flaky_title)


def write_markdown(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    atomic_write_text(path, text)


def append_step_summary(text: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """Append ``text`` to the job's step summary (the file ``$GITHUB_STEP_SUMMARY`` names) and return its path;
    None when the variable is not set. An unwritable path raises OSError for the caller to report."""
    name = env.get(STEP_SUMMARY_ENV, "")
    if not name:
        return None
    path = Path(name)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
    return path
