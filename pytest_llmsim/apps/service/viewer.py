"""The history viewer on the service's app (first part of issue 30.3): the runs list and a run's scenarios.

``GET /view`` lists the runs of the service's database (which is a history store: pytest runs appended with
``--llmsim-history`` and service batches side by side) with a pass-rate chart over time, a page at a time;
``GET /view/runs/{run_id}`` is one run's scenario table, filtered by status and blame and paged, each scenario's
conversation (speakers, tool calls), metric results, judge comment and cost one click away (``<details>``);
``GET /view/compare?a=RUN&b=RUN`` puts two runs side by side: the statistics (``history.compare``), each
scenario's pass counts, deltas and significance, and its two conversations turn by turn, the first turn where
they diverge highlighted; ``GET /view/scenario?nodeid=...`` is a scenario's verdicts over the runs, each with its
conversation one click away.

Pages are rendered on the server, with every value from the store escaped (``html.escape``) and no script at all:
a name, transcript or comment with HTML or JavaScript in it shows as text. The chart is inline SVG. Served as the
API is (loopback only unless a token is set; with a token, the browser must send it, see docs/history.md).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from pytest_llmsim.errors import HistoryError
from pytest_llmsim.history.compare import RunComparison, compare_runs, format_p, noisy_scenarios, scenario_text
from pytest_llmsim.history.store import HistoryStore, RunInfo
from pytest_llmsim.model.results import ScenarioRecord, turn_key

PAGE_SIZE = 100
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.passed{color:#176f2c}.failed,.error{color:#b00020}.turn{margin:.2em 0;white-space:pre-wrap}
.diverged{background:#fff3c4}
.client{color:#0b4f8a}.agent{color:#5b2c83}.tool{color:#666;font-family:monospace}nav a{margin-right:1em}"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>", status_code=status,
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                 "X-Content-Type-Options": "nosniff"})


def _number(value: Any, pattern: str) -> str:
    return escape(pattern.format(value)) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def runs_chart(runs: Sequence[RunInfo], width: int = 720, height: int = 160) -> str:
    """Inline SVG: each run's pass rate (0-100%) over the runs, oldest left."""
    points = [(i, run.figure("success_rate")) for i, run in enumerate(runs)
              if isinstance(run.figure("success_rate"), int | float)]
    if not points:
        return "<p>No run with a pass rate yet.</p>"
    step = width / max(1, len(runs) - 1)
    coords = " ".join(f"{i * step:.1f},{height - float(rate) * height:.1f}" for i, rate in points)
    return (f"<svg role='img' aria-label='pass rate over the runs' width='{width}' height='{height + 20}' "
            f"viewBox='0 -10 {width} {height + 20}'><rect x='0' y='0' width='{width}' height='{height}' "
            f"fill='#fafafa' stroke='#ddd'/><polyline fill='none' stroke='#176f2c' stroke-width='2' "
            f"points='{coords}'/><text x='4' y='12' font-size='11'>100%</text>"
            f"<text x='4' y='{height - 2}' font-size='11'>0%</text></svg>")


def runs_page(store: HistoryStore, page: int) -> HTMLResponse:
    runs = store.runs()
    newest_first = list(reversed(runs))
    pages = max(1, -(-len(runs) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = newest_first[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    previous = {later.run_id: earlier.run_id for earlier, later in itertools.pairwise(runs)}
    rows = []
    for run in shown:
        before = previous.get(run.run_id)
        compare_link = "" if before is None else \
            f"<a href='/view/compare?{escape(urlencode({'a': before, 'b': run.run_id}))}'>vs previous</a>"
        stats = run.figure("score_statistics")
        mean = stats.get("mean") if isinstance(stats, Mapping) else None
        git = escape((run.git_commit or "")[:10] + (f" {run.git_branch}" if run.git_branch else ""))
        rows.append(f"<tr><td><a href='/view/runs/{quote(run.run_id, safe='')}'>{escape(run.run_id[:8])}</a></td>"
                    f"<td>{escape(run.created_at[:19].replace('T', ' '))}</td><td>{escape(run.status)}</td>"
                    f"<td>{escape(run.source)}</td><td>{run.scenarios}</td>"
                    f"<td>{_number(run.figure('success_rate'), '{:.1%}')}</td><td>{_number(mean, '{:.2f}')}</td>"
                    f"<td>{_number(run.figure('total_cost_usd'), '{:.6f}')}</td><td>{git}</td>"
                    f"<td>{compare_link}</td></tr>")
    nav = _pager("/view", {}, page, pages)
    body = (f"<h1>Runs</h1><p>{len(runs)} run(s) in {escape(str(store.path))}</p><h2>Pass rate over the runs</h2>"
            f"{runs_chart(runs)}<h2>Runs, newest first</h2>{nav}<table><tr><th>run</th><th>created (UTC)</th>"
            "<th>status</th><th>source</th><th>scenarios</th><th>pass rate</th><th>mean score</th><th>cost $</th>"
            f"<th>git</th><th></th></tr>{''.join(rows)}</table>{nav}")
    return _page("llmsim runs", body)


def _pager(path: str, params: Mapping[str, str], page: int, pages: int) -> str:
    links = []
    if page > 1:
        links.append(f"<a href='{path}?{escape(urlencode({**params, 'page': page - 1}))}'>previous</a>")
    links.append(f"page {page} of {pages}")
    if page < pages:
        links.append(f"<a href='{path}?{escape(urlencode({**params, 'page': page + 1}))}'>next</a>")
    return f"<nav>{' '.join(links)}</nav>"


def _turns(transcript: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for turn in transcript:
        role = str(turn.get("role", ""))
        who = {"client": "Customer", "agent": "Agent"}.get(role, role or "?")
        calls = "".join(f"<div class='tool'>tool {escape(str(call.get('name', '?')))}("
                        f"{escape(json.dumps(call.get('arguments', {}), ensure_ascii=False, default=str))})"
                        + (f" → {escape(str(call.get('result')))}" if call.get("result") is not None else "")
                        + "</div>" for call in turn.get("tool_calls") or [] if isinstance(call, Mapping))
        out.append(f"<div class='turn {escape(role)}'><b>{escape(who)}:</b> {escape(str(turn.get('text', '')))}"
                   f"{calls}</div>")
    return "".join(out)


def _metrics(metrics: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{escape(str(m.get('name', '?')))}</td><td>{escape(str(m.get('score')))}</td>"
                   f"<td>{escape(str(m.get('passed')))}</td><td>{escape(str(m.get('reason', '')))}</td></tr>"
                   for m in metrics)
    return f"<table><tr><th>metric</th><th>score</th><th>passed</th><th>reason</th></tr>{rows}</table>" if rows else ""


def run_page(store: HistoryStore, run_id: str, *, status: str, blame: str, page: int) -> HTMLResponse:
    run = next((r for r in store.runs() if r.run_id == run_id), None)
    if run is None:
        raise HTTPException(404, f"run {run_id!r} not found")
    records = store.records(run_id)
    statuses = sorted({str(r.outcome) for r in records})
    blames = sorted({r.result.blame for r in records if r.result.blame})
    chosen = [r for r in records if (not status or str(r.outcome) == status)
              and (not blame or r.result.blame == blame)]
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = "".join(_scenario_row(r) for r in chosen[(page - 1) * PAGE_SIZE:page * PAGE_SIZE])
    path = f"/view/runs/{quote(run_id, safe='')}"
    params = {k: v for k, v in (("status", status), ("blame", blame)) if v}

    def options(name: str, values: Sequence[str], current: str) -> str:
        items = "".join(f"<option value='{escape(v)}'{' selected' if v == current else ''}>{escape(v)}</option>"
                        for v in values)
        return f"<label>{name} <select name='{name}'><option value=''>any</option>{items}</select></label> "

    form = (f"<form method='get' action='{path}'>{options('status', statuses, status)}"
            f"{options('blame', blames, blame)}<button type='submit'>filter</button></form>")
    nav = _pager(path, params, page, pages)
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>Run {escape(run.run_id)}</h1>"
            f"<p>{escape(run.created_at)} · {escape(run.status)} · {escape(run.source)} · "
            f"{escape(run.git_commit or 'no git commit')} {escape(run.git_branch or '')}</p>"
            f"<p>{len(chosen)} of {len(records)} scenario(s)</p>{form}{nav}"
            "<table><tr><th>scenario</th><th>outcome</th><th>score</th><th>blame</th><th>cost $</th>"
            f"<th>conversation</th></tr>{rows}</table>{nav}")
    return _page(f"llmsim run {run.run_id[:8]}", body)


def _scenario_row(record: ScenarioRecord) -> str:
    result = record.result
    outcome = str(record.outcome)
    details = (f"<details><summary>{len(result.transcript)} turn(s)</summary>{_turns(result.transcript)}"
               f"<p><b>Judge:</b> {escape(result.comment)}</p>"
               + (f"<p><b>Error:</b> {escape(result.error_message)}</p>" if result.error_message else "")
               + f"{_metrics(result.metrics)}</details>")
    history = f"/view/scenario?{escape(urlencode({'nodeid': record.nodeid}))}"
    return (f"<tr><td><a href='{history}'>{escape(record.nodeid)}</a></td>"
            f"<td class='{escape(outcome)}'>{escape(outcome)}</td>"
            f"<td>{_number(result.score, '{}')}</td><td>{escape(result.blame)}</td>"
            f"<td>{_number(record.cost_usd, '{:.6f}')}</td><td>{details}</td></tr>")


def first_divergence(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the first turn where two conversations differ (role, text or tool calls); None: the same."""
    for index in range(max(len(old), len(new))):
        if index >= len(old) or index >= len(new) or turn_key(old[index]) != turn_key(new[index]):
            return index
    return None


def _diff(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> str:
    diverged = first_divergence(old, new)
    rows = []
    for index in range(max(len(old), len(new))):
        mark = " class='diverged'" if index == diverged else ""
        cells = "".join(f"<td>{_turns([side[index]]) if index < len(side) else ''}</td>" for side in (old, new))
        rows.append(f"<tr{mark}><td>{index + 1}</td>{cells}</tr>")
    head = "same conversation" if diverged is None else f"first diverging turn: {diverged + 1}"
    return (f"<details><summary>{head}</summary><table><tr><th>turn</th><th>A</th><th>B</th></tr>"
            f"{''.join(rows)}</table></details>")


def compare_page(store: HistoryStore, a: str, b: str, *, page: int) -> HTMLResponse:
    run_a, run_b = store.resolve(a), store.resolve(b)
    records_a = {r.nodeid: r for r in store.records(run_a.run_id)}
    records_b = {r.nodeid: r for r in store.records(run_b.run_id)}
    comparison: RunComparison = compare_runs(records_a.values(), records_b.values(),
                                             noisy=noisy_scenarios(store.run_verdicts(100)),
                                             old_label=run_a.run_id[:8], new_label=run_b.run_id[:8])
    figures = "".join(f"<li>{escape(f.text())}{' <b>significant</b>' if f.significant else ''}</li>"
                      for f in comparison.suite)
    scenarios = comparison.scenarios
    pages = max(1, -(-len(scenarios) // PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = []
    for s in scenarios[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]:
        old, new = records_a.get(s.nodeid), records_b.get(s.nodeid)
        significance = ("significant " + ("drop" if s.dropped else "rise")) if s.significant else ""
        rows.append(
            f"<tr><td>{escape(s.nodeid)}</td><td>{escape(scenario_text(s).partition(': ')[2])}</td>"
            f"<td>{'' if s.p_adjusted is None else escape(format_p(s.p_adjusted))}</td>"
            f"<td><b>{escape(significance)}</b>{' noisy' if s.noisy else ''}</td>"
            f"<td>{_diff(old.result.transcript if old else [], new.result.transcript if new else [])}</td></tr>")
    nav = _pager("/view/compare", {"a": run_a.run_id, "b": run_b.run_id}, page, pages)
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>{escape(run_a.run_id[:8])} (A) → "
            f"{escape(run_b.run_id[:8])} (B)</h1><ul>{figures}</ul><p>{escape(comparison.statistics_line())}</p>"
            f"{nav}<table><tr><th>scenario</th><th>A → B</th><th>adjusted p</th><th>significance</th>"
            f"<th>conversation</th></tr>{''.join(rows)}</table>{nav}")
    return _page("llmsim compare", body)


def scenario_page(store: HistoryStore, nodeid: str) -> HTMLResponse:
    rows = []
    for run, record in store.scenario_history(nodeid):
        result, outcome = record.result, str(record.outcome)
        stats = record.trial_figures()
        trials = f"{stats['passed_trials']}/{stats['trials']}" if stats.get("trials") else "-"
        rows.append(f"<tr><td><a href='/view/runs/{quote(run.run_id, safe='')}'>{escape(run.run_id[:8])}</a></td>"
                    f"<td>{escape(run.created_at[:19].replace('T', ' '))}</td>"
                    f"<td>{escape((run.git_commit or '')[:10])}</td><td class='{escape(outcome)}'>{escape(outcome)}"
                    f"</td><td>{_number(result.score, '{}')}</td><td>{escape(trials)}</td>"
                    f"<td><details><summary>{len(result.transcript)} turn(s)</summary>{_turns(result.transcript)}"
                    f"<p><b>Judge:</b> {escape(result.comment)}</p></details></td></tr>")
    if not rows:
        raise HTTPException(404, "no run of the history has this scenario")
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>{escape(nodeid)}</h1><p>its last {len(rows)} run(s), "
            "newest first</p><table><tr><th>run</th><th>created (UTC)</th><th>commit</th><th>outcome</th>"
            f"<th>score</th><th>trials passed</th><th>conversation</th></tr>{''.join(rows)}</table>")
    return _page("llmsim scenario", body)


def add_viewer(app: FastAPI, database: Path) -> None:
    """The viewer's pages on ``app``, reading ``database`` (the service's database, a history store)."""
    store = HistoryStore(database)

    def guarded(render: Any, *args: Any, **kwargs: Any) -> HTMLResponse:
        try:
            response: HTMLResponse = render(store, *args, **kwargs)
        except HistoryError as exc:
            # a run the history does not hold, or a history that cannot be read: one line, as the CLI says it
            return _page("llmsim history", f"<h1>History unavailable</h1><p>{escape(str(exc))}</p>", status=404)
        return response

    @app.get("/view", response_class=HTMLResponse, include_in_schema=False)
    def view_runs(page: int = Query(1)) -> HTMLResponse:
        return guarded(runs_page, page)

    @app.get("/view/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def view_run(run_id: str, status: str = Query(""), blame: str = Query(""), page: int = Query(1)
                 ) -> HTMLResponse:
        return guarded(run_page, run_id, status=status, blame=blame, page=page)

    @app.get("/view/scenario", response_class=HTMLResponse, include_in_schema=False)
    def view_scenario(nodeid: str = Query(...)) -> HTMLResponse:
        return guarded(scenario_page, nodeid)

    @app.get("/view/compare", response_class=HTMLResponse, include_in_schema=False)
    def view_compare(a: str = Query(...), b: str = Query(...), page: int = Query(1)) -> HTMLResponse:
        return guarded(compare_page, a, b, page=page)
