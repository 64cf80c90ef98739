"""The history viewer on the service's app (issue 30.3): runs over time, a run, two runs side by side, a scenario.

``GET /view`` lists the runs of a history store (pytest runs appended with ``--llmsim-history`` and service batches
side by side; ``llmsim view`` also opens an export file as a one-run history) under charts of the pass rate, mean
score and cost over time, one line per model (``charts.py``), a page at a time; ``GET /view/runs/{run_id}`` is one
run's scenario table, filtered by status, blame, failed metric and tag in SQL and paged, each scenario's
conversation (speakers of multi-agent turns, tool calls), metric results, judge comment and cost one click away
(``<details>``); ``GET /view/compare?a=RUN&b=RUN`` puts two runs side by side: the statistics
(``history.compare``), each scenario's pass counts, deltas and significance, and its two conversations turn by
turn, the first turn where they diverge highlighted; ``GET /view/scenario?nodeid=...`` is a scenario's verdicts
over the runs, each with its conversation one click away.

Pages are rendered on the server, every value from the store escaped by one helper (``charts.esc``) and no script
at all (the Content-Security-Policy forbids any): a name, transcript or comment with HTML or JavaScript in it shows
as text. Served as the API is (loopback only unless a token is set; with a token a browser opens
``/view?token=...`` once, which sets an HttpOnly, SameSite=Strict cookie: ``app.py``).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from pytest_llmsim.apps.service.charts import esc, mean_score, run_model, runs_charts
from pytest_llmsim.errors import HistoryError
from pytest_llmsim.history.compare import RunComparison, compare_runs, format_p, noisy_scenarios, scenario_text
from pytest_llmsim.history.store import HistoryStore
from pytest_llmsim.model.results import (
    ScenarioRecord,
    handoff_text,
    tool_call_parts,
    turn_handoffs,
    turn_key,
    turn_messages,
    turn_tool_calls,
)

PAGE_SIZE = 100
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.passed{color:#176f2c}.failed,.error{color:#b00020}.turn{margin:.2em 0;white-space:pre-wrap}
.diverged{background:#fff3c4}
.client{color:#0b4f8a}.agent{color:#5b2c83}.tool{color:#666;font-family:monospace}nav a{margin-right:1em}
.speaker{font-weight:bold}.handoff{color:#666;font-style:italic}figure.chart{margin:.5em 0 1em}
figcaption{font-weight:bold}.legend{margin-right:1.2em;font-size:.9em}form label{margin-right:.5em}"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>", status_code=status,
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                 "X-Content-Type-Options": "nosniff"})


def _number(value: Any, pattern: str) -> str:
    return esc(pattern.format(value)) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


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
            f"<a href='/view/compare?{esc(urlencode({'a': before, 'b': run.run_id}))}'>vs previous</a>"
        git = esc((run.git_commit or "")[:10] + (f" {run.git_branch}" if run.git_branch else ""))
        rows.append(f"<tr><td><a href='/view/runs/{esc(quote(run.run_id, safe=''))}'>{esc(run.run_id[:8])}</a></td>"
                    f"<td>{esc(run.created_at[:19].replace('T', ' '))}</td><td>{esc(run.status)}</td>"
                    f"<td>{esc(run.source)}</td><td>{esc(run_model(run))}</td><td>{run.scenarios}</td>"
                    f"<td>{_number(run.figure('success_rate'), '{:.1%}')}</td>"
                    f"<td>{_number(mean_score(run), '{:.2f}')}</td>"
                    f"<td>{_number(run.figure('total_cost_usd'), '{:.6f}')}</td><td>{git}</td>"
                    f"<td>{compare_link}</td></tr>")
    nav = _pager("/view", {}, page, pages)
    body = (f"<h1>Runs</h1><p>{len(runs)} run(s) in {esc(store.where)}</p><h2>Over time, per model</h2>"
            f"<div id='charts'>{runs_charts(runs)}</div><h2>Runs, newest first</h2>{nav}<table id='runs'><tr>"
            "<th>run</th><th>created (UTC)</th><th>status</th><th>source</th><th>model</th><th>scenarios</th>"
            "<th>pass rate</th><th>mean score</th><th>cost $</th>"
            f"<th>git</th><th></th></tr>{''.join(rows)}</table>{nav}")
    return _page("llmsim runs", body)


def _pager(path: str, params: Mapping[str, str], page: int, pages: int) -> str:
    links = []
    if page > 1:
        links.append(f"<a href='{esc(path)}?{esc(urlencode({**params, 'page': page - 1}))}'>previous</a>")
    links.append(f"page {page} of {pages}")
    if page < pages:
        links.append(f"<a href='{esc(path)}?{esc(urlencode({**params, 'page': page + 1}))}'>next</a>")
    return f"<nav>{' '.join(links)}</nav>"


def _calls(calls: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for call in calls:
        name, arguments, result = tool_call_parts(call)
        out.append(f"<div class='tool'>tool {esc(name)}({esc(arguments)})"
                   + (f" → {esc(result)}" if result is not None else "") + "</div>")
    return "".join(out)


def _turns(transcript: Sequence[Mapping[str, Any]]) -> str:
    """A conversation as a chat: the customer's and the agent's turns, each speaker of a multi-agent turn on its
    own line (``Agent [Billing]``) with its tool calls, then the turn's handoffs."""
    out = []
    for turn in transcript:
        role = str(turn.get("role", ""))
        if role == "client":
            out.append(f"<div class='turn client'><b>Customer:</b> {esc(turn.get('text') or '')}</div>")
            continue
        messages = turn_messages(turn)
        if not messages:
            who = "Agent" if role == "agent" else role or "?"
            out.append(f"<div class='turn {esc(role)}'><b>{esc(who)}:</b> {esc(turn.get('text') or '')}"
                       f"{_calls(turn_tool_calls(turn))}</div>")
            continue
        for message in messages:
            calls = [c for c in message.get("tool_calls") or [] if isinstance(c, Mapping)]
            out.append(f"<div class='turn agent'><b>Agent <span class='speaker'>[{esc(message['agent'])}]</span>:"
                       f"</b> {esc(message.get('content') or '')}{_calls(calls)}</div>")
        handoffs = turn_handoffs(turn)
        if handoffs:
            out.append(f"<div class='turn handoff'><b>Handoffs:</b> "
                       f"{esc('; '.join(handoff_text(h) for h in handoffs))}</div>")
    return "".join(out)


def _metrics(metrics: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{esc(str(m.get('name', '?')))}</td><td>{esc(str(m.get('score')))}</td>"
                   f"<td>{esc(str(m.get('passed')))}</td><td>{esc(str(m.get('reason', '')))}</td></tr>"
                   for m in metrics)
    return f"<table><tr><th>metric</th><th>score</th><th>passed</th><th>reason</th></tr>{rows}</table>" if rows else ""


FILTERS = (("status", "status"), ("blame", "blame"), ("metric", "failed metric"), ("tag", "tag"))


def run_page(store: HistoryStore, run_id: str, *, filters: Mapping[str, str], page: int) -> HTMLResponse:
    run = store.run(run_id)
    values = store.filter_values(run_id)
    chosen = {name: filters.get(name, "") for name, _ in FILTERS}

    def matching_records(offset: int, limit: int) -> tuple[int, list[ScenarioRecord]]:
        return store.records_page(run_id, status=chosen["status"], blame=chosen["blame"], metric=chosen["metric"],
                                  tag=chosen["tag"], offset=offset, limit=limit)

    total = run.scenarios
    matching, _ = matching_records(0, 0)
    pages = max(1, -(-matching // PAGE_SIZE))
    page = min(max(1, page), pages)
    _, records = matching_records((page - 1) * PAGE_SIZE, PAGE_SIZE)
    rows = "".join(_scenario_row(r) for r in records)
    path = f"/view/runs/{quote(run_id, safe='')}"
    params = {k: v for k, v in chosen.items() if v}

    def options(name: str, label: str, current: str) -> str:
        items = "".join(f"<option value='{esc(v)}'{' selected' if v == current else ''}>{esc(v)}</option>"
                        for v in values.get(name, []))
        return f"<label>{esc(label)} <select name='{name}'><option value=''>any</option>{items}</select></label> "

    form = (f"<form method='get' action='{esc(path)}'>{''.join(options(n, lab, chosen[n]) for n, lab in FILTERS)}"
            "<button type='submit'>filter</button></form>")
    nav = _pager(path, params, page, pages)
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>Run {esc(run.run_id)}</h1>"
            f"<p>{esc(run.created_at)} · {esc(run.status)} · {esc(run.source)} · {esc(run_model(run))} · "
            f"{esc(run.git_commit or 'no git commit')} {esc(run.git_branch or '')}</p>"
            f"<p id='shown'>{matching} of {total} scenario(s)</p>{form}{nav}"
            "<table id='scenarios'><tr><th>scenario</th><th>outcome</th><th>score</th><th>blame</th><th>cost $</th>"
            f"<th>conversation</th></tr>{rows}</table>{nav}")
    return _page(f"llmsim run {run.run_id[:8]}", body)


def _scenario_row(record: ScenarioRecord) -> str:
    result = record.result
    outcome = str(record.outcome)
    details = (f"<details><summary>{len(result.transcript)} turn(s)</summary>{_turns(result.transcript)}"
               f"<p><b>Judge:</b> {esc(result.comment)}</p>"
               + (f"<p><b>Error:</b> {esc(result.error_message)}</p>" if result.error_message else "")
               + f"{_metrics(result.metrics)}</details>")
    history = f"/view/scenario?{esc(urlencode({'nodeid': record.nodeid}))}"
    return (f"<tr><td><a href='{history}'>{esc(record.nodeid)}</a></td>"
            f"<td class='{esc(outcome)}'>{esc(outcome)}</td>"
            f"<td>{_number(result.score, '{}')}</td><td>{esc(result.blame)}</td>"
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


Compared = tuple[RunComparison, dict[str, ScenarioRecord], dict[str, ScenarioRecord]]
CACHED_COMPARISONS = 4


def compare_page(store: HistoryStore, a: str, b: str, *, page: int,
                 cache: OrderedDict[tuple[Any, ...], Compared] | None = None) -> HTMLResponse:
    """Two runs side by side. The comparison (its bootstrap over a thousand scenarios takes a second or two) is
    kept in ``cache`` for the pages after the first, keyed by both runs' ids, statuses and stored counts (a batch
    still running changes its count, so it is compared afresh)."""
    run_a, run_b = store.resolve(a), store.resolve(b)
    key = (run_a.run_id, run_a.status, run_a.scenarios, run_b.run_id, run_b.status, run_b.scenarios)
    found = cache.get(key) if cache is not None else None
    if found is None:
        records_a = {r.nodeid: r for r in store.records(run_a.run_id)}
        records_b = {r.nodeid: r for r in store.records(run_b.run_id)}
        found = (compare_runs(records_a.values(), records_b.values(), noisy=noisy_scenarios(store.run_verdicts(100)),
                              old_label=run_a.run_id[:8], new_label=run_b.run_id[:8]), records_a, records_b)
        if cache is not None:
            cache[key] = found
            while len(cache) > CACHED_COMPARISONS:
                cache.popitem(last=False)
    elif cache is not None:
        cache.move_to_end(key)
    comparison, records_a, records_b = found
    figures = "".join(f"<li>{esc(f.text())}{' <b>significant</b>' if f.significant else ''}</li>"
                      for f in comparison.suite)
    scenarios = comparison.scenarios
    pages = max(1, -(-len(scenarios) // PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = []
    for s in scenarios[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]:
        old, new = records_a.get(s.nodeid), records_b.get(s.nodeid)
        significance = ("significant " + ("drop" if s.dropped else "rise")) if s.significant else ""
        rows.append(
            f"<tr><td><a href='/view/scenario?{esc(urlencode({'nodeid': s.nodeid}))}'>{esc(s.nodeid)}</a></td>"
            f"<td>{esc(scenario_text(s).partition(': ')[2])}</td>"
            f"<td>{'' if s.p_adjusted is None else esc(format_p(s.p_adjusted))}</td>"
            f"<td><b>{esc(significance)}</b>{' noisy' if s.noisy else ''}</td>"
            f"<td>{_diff(old.result.transcript if old else [], new.result.transcript if new else [])}</td></tr>")
    nav = _pager("/view/compare", {"a": run_a.run_id, "b": run_b.run_id}, page, pages)
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>{esc(run_a.run_id[:8])} (A) → "
            f"{esc(run_b.run_id[:8])} (B)</h1><ul>{figures}</ul><p>{esc(comparison.statistics_line())}</p>"
            f"{nav}<table><tr><th>scenario</th><th>A → B</th><th>adjusted p</th><th>significance</th>"
            f"<th>conversation</th></tr>{''.join(rows)}</table>{nav}")
    return _page("llmsim compare", body)


def scenario_page(store: HistoryStore, nodeid: str) -> HTMLResponse:
    rows = []
    for run, record in store.scenario_history(nodeid):
        result, outcome = record.result, str(record.outcome)
        stats = record.trial_figures()
        trials = f"{stats['passed_trials']}/{stats['trials']}" if stats.get("trials") else "-"
        rows.append(f"<tr><td><a href='/view/runs/{esc(quote(run.run_id, safe=''))}'>{esc(run.run_id[:8])}</a></td>"
                    f"<td>{esc(run.created_at[:19].replace('T', ' '))}</td>"
                    f"<td>{esc((run.git_commit or '')[:10])}</td><td class='{esc(outcome)}'>{esc(outcome)}"
                    f"</td><td>{_number(result.score, '{}')}</td><td>{esc(trials)}</td>"
                    f"<td><details><summary>{len(result.transcript)} turn(s)</summary>{_turns(result.transcript)}"
                    f"<p><b>Judge:</b> {esc(result.comment)}</p></details></td></tr>")
    if not rows:
        raise HTTPException(404, "no run of the history has this scenario")
    body = (f"<nav><a href='/view'>all runs</a></nav><h1>{esc(nodeid)}</h1><p>its last {len(rows)} run(s), "
            "newest first</p><table><tr><th>run</th><th>created (UTC)</th><th>commit</th><th>outcome</th>"
            f"<th>score</th><th>trials passed</th><th>conversation</th></tr>{''.join(rows)}</table>")
    return _page("llmsim scenario", body)


def add_viewer(app: FastAPI, source: Path | HistoryStore) -> None:
    """The viewer's pages on ``app``, reading ``source`` (a history store, or the service's database: its path).
    """
    store = source if isinstance(source, HistoryStore) else HistoryStore(source)

    def guarded(render: Any, *args: Any, **kwargs: Any) -> HTMLResponse:
        try:
            response: HTMLResponse = render(store, *args, **kwargs)
        except HistoryError as exc:
            # a run the history does not hold, or a history that cannot be read: one line, as the CLI says it
            return _page("llmsim history", f"<h1>History unavailable</h1><p>{esc(str(exc))}</p>", status=404)
        return response

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # no icon: a browser asks for one, and a 404 would show as a console error

    @app.get("/view", response_class=HTMLResponse, include_in_schema=False)
    def view_runs(page: int = Query(1)) -> HTMLResponse:
        return guarded(runs_page, page)

    @app.get("/view/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def view_run(run_id: str, status: str = Query(""), blame: str = Query(""), metric: str = Query(""),
                 tag: str = Query(""), page: int = Query(1)) -> HTMLResponse:
        filters = {"status": status, "blame": blame, "metric": metric, "tag": tag}
        return guarded(run_page, run_id, filters=filters, page=page)

    @app.get("/view/scenario", response_class=HTMLResponse, include_in_schema=False)
    def view_scenario(nodeid: str = Query(...)) -> HTMLResponse:
        return guarded(scenario_page, nodeid)

    comparisons: OrderedDict[tuple[Any, ...], Compared] = OrderedDict()

    @app.get("/view/compare", response_class=HTMLResponse, include_in_schema=False)
    def view_compare(a: str = Query(...), b: str = Query(...), page: int = Query(1)) -> HTMLResponse:
        return guarded(compare_page, a, b, page=page, cache=comparisons)
