"""The history viewer in a real browser: Playwright driving the system Chromium (no browser download) against the
viewer served by uvicorn on a free loopback port.

Covered: the four views (runs with their charts per model, a run with its filters, two runs side by side with the
first diverging turn highlighted, a scenario's history), the speakers of multi-agent turns, hostile HTML/JS in
every name and text never running (no dialog, no console error from a payload, no injected element, with the
Content-Security-Policy bypassed so the escaping alone is tested), and the token cookie. Each test writes its
screenshots to its tmp dir; with ``LLMSIM_SCREENSHOTS`` set to a folder also there (``LLMSIM_SCREENSHOTS=docs/images``
refreshes the images of docs/history.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright "
                               "(the test extra has it); its browser download is not needed")

from pytest_llmsim.history.store import GitInfo, HistoryStore  # noqa: E402
from pytest_llmsim.model.results import ModelUsage, Outcome, ScenarioRecord, ScenarioResult, Status  # noqa: E402
from pytest_llmsim.reporting.summary import summarize  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = os.environ.get("LLMSIM_CHROMIUM") or next((p for p in map(shutil.which, BROWSERS) if p), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    BROWSER is None, reason="no system Chromium (Debian: apt-get install -y chromium; or set LLMSIM_CHROMIUM); CI "
    "installs it")]

# Each payload would, if it ran or were parsed as markup, open a dialog, log to the console or leave an element
# with the id ``pwned``.
HOSTILE = "<script>alert('x');console.error('PWNED')</script><img src=x onerror=alert(1)><b id=pwned>b</b>"
MODELS = ("gpt-4o-mini", f"claude-3-5-haiku{HOSTILE}")  # a model name is drawn in the charts' SVG too


def _turns(case: int, run: int) -> list[dict[str, Any]]:
    """A customer turn, then a multi-agent turn (Triage hands to Billing, which calls a tool), then a last turn;
    case 1's last agent turn changes between run 0 and the others (the diff's first diverging turn: 4)."""
    last = "Refund issued." if case != 1 or run == 0 else f"Sorry, I cannot help {HOSTILE}"
    return [{"role": "client", "text": f"I want a refund {HOSTILE}"},
            {"role": "agent", "text": "Triage: routing\n\nBilling: checking",
             "messages": [{"agent": f"Triage{HOSTILE}", "content": f"routing you {HOSTILE}"},
                          {"agent": "Billing", "content": "checking your order",
                           "tool_calls": [{"name": "lookup", "arguments": {"q": HOSTILE}, "result": "found"}]}],
             "handoffs": [{"from": f"Triage{HOSTILE}", "to": "Billing", "reason": "refund"}]},
            {"role": "client", "text": "Thanks"},
            {"role": "agent", "text": last}]


def _records(run: int, failing: set[int]) -> list[ScenarioRecord]:
    out = []
    for case in range(5):
        failed = case in failing
        status = Status.FAILED if failed else Status.PASSED
        metrics = [{"name": "judge", "score": 1 if failed else 3, "passed": not failed,
                    "reason": f"judge says {HOSTILE}", "details": {"blame": "agent" if failed else None}},
                   {"name": f"rules{HOSTILE}", "score": 0.0 if case == 4 else 1.0, "passed": case != 4,
                    "reason": "a rule broke" if case == 4 else "", "details": {}}]
        result = ScenarioResult(
            scenario=f"case_{case}{HOSTILE}", nodeid=f"s.yaml::case_{case}{HOSTILE}", source="s.yaml", status=status,
            min_score=2, score=1 if failed else 3, comment=f"The agent was rude {HOSTILE}", metrics=metrics,
            transcript=_turns(case, run), tags=["billing", f"t{HOSTILE}"] if case % 2 == 0 else ["smoke"],
            usage=[ModelUsage("agent", MODELS[run % 2])])
        out.append(ScenarioRecord(result=result, outcome=Outcome(status.value), cost_usd=0.001 * (run + 1)))
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> HistoryStore:
    store = HistoryStore(tmp_path_factory.mktemp("history") / "h.sqlite")
    for run, failing in enumerate(({4}, {1, 4}, {1}, {4})):
        records = _records(run, failing)
        store.append_run(run_id=f"run-{run}-{'x' * 8}", status="completed", records=records,
                         summary=summarize(records).to_dict(), started_at=f"2026-01-0{run + 1}T00:00:00.000+00:00",
                         git=GitInfo("f" * 40, f"main{HOSTILE}", True),
                         settings={"models": {"agent": [MODELS[run % 2]]}})
    return store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(store: HistoryStore, token: str | None) -> Iterator[str]:
    import uvicorn

    from pytest_llmsim.apps.service.app import create_viewer_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_viewer_app(store, "127.0.0.1", port, token=token),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the viewer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def viewer(history: HistoryStore) -> Iterator[str]:
    yield from _serve(history, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=BROWSER, chromium_sandbox=False,
                                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield launched
        launched.close()


class Watched:
    """A page whose dialogs, console errors and uncaught errors are recorded (a payload that ran shows there)."""

    def __init__(self, browser: Any, *, bypass_csp: bool = False) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=bypass_csp)
        self.page = self.context.new_page()
        self.events: list[str] = []
        self.page.on("dialog", lambda dialog: (self.events.append(f"dialog {dialog.message}"), dialog.dismiss()))
        self.page.on("console", lambda message: self.events.append(f"console {message.type} {message.text}"))
        self.page.on("pageerror", lambda error: self.events.append(f"pageerror {error}"))
        self.requests: list[str] = []  # every URL the page asked for (assets from elsewhere would show here)
        self.page.on("request", lambda request: self.requests.append(request.url))

    def goto(self, url: str) -> Any:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, (url, response and response.status)
        return response


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    page = Watched(browser)
    yield page
    page.context.close()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's tmp dir, and in ``$LLMSIM_SCREENSHOTS`` when set (the docs' images)."""
    page.screenshot(path=tmp_path / f"{name}.png")
    folder = os.environ.get("LLMSIM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=Path(folder) / f"viewer-{name}.png")


def test_the_runs_view_charts_pass_rate_score_and_cost_per_model(viewer: str, watched: Watched,
                                                                  tmp_path: Path) -> None:
    page = watched.page
    watched.goto(f"{viewer}/view")
    captions = page.locator("figure.chart figcaption").all_inner_texts()
    assert captions == ["Pass rate", "Mean score", "Cost (USD)"]
    for chart in page.locator("figure.chart").all():
        models = [line.get_attribute("data-model") for line in chart.locator("polyline.series").all()]
        assert models == list(MODELS)  # one line per model, in order of first run
        assert chart.locator("circle").count() == 4  # a dot per run
        assert chart.locator("svg[role=img]").first.bounding_box()["width"] > 300  # drawn, not empty
    pass_rate = page.locator("figure.chart").first
    # dots by model then run: run 1 (claude, 3 of 5 passed) is drawn lower than run 0 (gpt, 4 of 5)
    dots = pass_rate.locator("circle").all()
    assert float(dots[2].get_attribute("cy")) > float(dots[0].get_attribute("cy"))
    rows = page.locator("table#runs > tbody > tr").all_inner_texts()
    assert len(rows) == 5 and "run-3-xx" in rows[1] and MODELS[1] in rows[1] and "80.0%" in rows[1]
    _shot(page, tmp_path, "runs")
    # no asset from anywhere but the viewer itself (no CDN): styles and charts are inline
    assert watched.requests and all(url.startswith(f"{viewer}/") for url in watched.requests), watched.requests
    page.click("text=vs previous >> nth=0")
    assert "/view/compare?a=run-2" in page.url
    assert not [e for e in watched.events if "error" in e or "dialog" in e], watched.events


def test_a_run_filters_by_status_blame_metric_and_tag(viewer: str, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    watched.goto(f"{viewer}/view")
    page.click("table#runs >> text=run-1-xx")
    assert page.locator("#shown").inner_text() == "5 of 5 scenario(s)"

    def choose(**filters: str) -> list[str]:
        for name in ("status", "blame", "metric", "tag"):
            page.select_option(f"select[name={name}]", filters.get(name, ""))
        page.click("button[type=submit]")
        page.wait_for_load_state()
        return [row.split("\t")[0] for row in page.locator("table#scenarios > tbody > tr").all_inner_texts()[1:]]

    def case(n: int) -> str:
        return f"s.yaml::case_{n}{HOSTILE}"

    assert choose(status="failed") == [case(1), case(4)] and "status=failed" in page.url
    assert page.locator("#shown").inner_text() == "2 of 5 scenario(s)"
    assert choose(status="passed") == [case(0), case(2), case(3)]
    assert choose(blame="agent") == [case(1), case(4)]
    assert choose(metric="judge") == [case(1), case(4)]
    assert choose(metric=f"rules{HOSTILE}") == [case(4)]  # the metric that failed, not the scenario's verdict
    assert choose(tag="smoke") == [case(1), case(3)]
    assert choose(tag=f"t{HOSTILE}", status="failed") == [case(4)]
    assert choose() == [case(n) for n in range(5)]
    # a conversation opens in place: the speakers of the multi-agent turn, its tool call and handoff, the metrics
    page.locator("table#scenarios summary").nth(1).click()
    opened = page.locator("table#scenarios details[open]")
    speakers = opened.locator(".speaker").all_inner_texts()
    assert speakers == [f"[Triage{HOSTILE}]", "[Billing]"]
    text = opened.inner_text()
    assert 'tool lookup({"q":' in text and "→ found" in text and f"Triage{HOSTILE} -> Billing (refund)" in text
    assert "The agent was rude" in text and "judge says" in text
    _shot(page, tmp_path, "run")
    # the scenario's history is one click away, and from it any run's transcript
    page.click("table#scenarios >> text=s.yaml::case_1")
    assert "/view/scenario?nodeid=" in page.url
    outcomes = page.locator("table td.passed, table td.failed").all_inner_texts()
    assert outcomes == ["passed", "failed", "failed", "passed"]  # run 3, 2, 1, 0
    page.locator("summary").nth(2).click()
    assert f"Sorry, I cannot help {HOSTILE}" in page.locator("details[open]").inner_text()
    _shot(page, tmp_path, "scenario")
    page.click("text=run-0-xx")
    assert page.url.endswith("/view/runs/run-0-xxxxxxxx")


def test_two_runs_side_by_side_highlight_the_first_diverging_turn(viewer: str, watched: Watched,
                                                                  tmp_path: Path) -> None:
    page = watched.page
    watched.goto(f"{viewer}/view/compare?a=run-0&b=run-1")
    assert "pass rate 0.800 -> 0.600" in page.locator("body").inner_text()
    rows = page.locator("table").first.locator(":scope > tbody > tr").all()
    changed = next(row for row in rows if "case_1" in row.inner_text().split("\t")[0])
    assert "passed 1/1 -> 0/1" in changed.inner_text()
    changed.locator("summary").click()
    assert changed.locator("summary").inner_text() == "first diverging turn: 4"
    highlighted = changed.locator("tr.diverged")
    assert highlighted.count() == 1 and highlighted.locator("td").first.inner_text() == "4"
    assert highlighted.evaluate("row => getComputedStyle(row).backgroundColor") == "rgb(255, 243, 196)"
    cells = highlighted.locator(":scope > td").all_inner_texts()
    assert "Refund issued." in cells[1] and "Sorry, I cannot help" in cells[2]
    assert changed.locator(".speaker").count() == 4  # both sides show who spoke in the multi-agent turn
    same = next(row for row in rows if "case_0" in row.inner_text().split("\t")[0])
    assert same.locator("summary").inner_text() == "same conversation"
    highlighted.scroll_into_view_if_needed()
    _shot(page, tmp_path, "compare")


def test_hostile_html_in_every_value_never_runs(history: HistoryStore, viewer: str, browser: Any) -> None:
    """Every page, with the Content-Security-Policy bypassed (escaping alone must hold), every details opened."""
    from urllib.parse import quote

    watched = Watched(browser, bypass_csp=True)
    try:
        for path in ("/view", "/view/runs/run-1-xxxxxxxx", f"/view/runs/run-1-xxxxxxxx?tag={quote('t' + HOSTILE)}",
                     "/view/compare?a=run-0&b=run-1", f"/view/scenario?nodeid={quote('s.yaml::case_1' + HOSTILE)}"):
            watched.goto(viewer + path)
            for summary in watched.page.locator("summary").all():
                summary.click()
            page = watched.page
            assert page.locator("#pwned").count() == 0 and page.locator("img").count() == 0, path
            assert page.locator("script").count() == 0, path
            assert HOSTILE in page.locator("body").inner_text(), path  # shown as text
        assert watched.events == [], watched.events
    finally:
        watched.context.close()
    # the page also sends the policy that would stop a script the escaping missed
    watched = Watched(browser)
    try:
        response = watched.goto(f"{viewer}/view")
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
    finally:
        watched.context.close()


def test_with_a_token_the_browser_passes_it_once_and_keeps_an_httponly_cookie(history: HistoryStore,
                                                                            browser: Any) -> None:
    for url in _serve(history, "s3cret-token"):
        watched = Watched(browser)
        try:
            refused = watched.page.goto(f"{url}/view")
            assert refused is not None and refused.status == 401 and "?token=" in refused.text()
            watched.goto(f"{url}/view/runs/run-1-xxxxxxxx?token=s3cret-token&status=failed")
            assert watched.page.url == f"{url}/view/runs/run-1-xxxxxxxx?status=failed"  # the token left the address
            [cookie] = watched.context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == \
                ("llmsim_token", True, "Strict", "/view")
            watched.goto(f"{url}/view")  # later pages: the cookie alone
            watched.page.click("text=vs previous >> nth=0")
            assert "first diverging turn" in watched.page.locator("body").inner_text() or \
                "same conversation" in watched.page.locator("body").inner_text()
        finally:
            watched.context.close()
        wrong = Watched(browser)
        try:
            response = wrong.page.goto(f"{url}/view?token=wrong")
            assert response is not None and response.status == 401 and wrong.context.cookies() == []
        finally:
            wrong.context.close()
