"""The history viewer on the service's app: the runs list (chart, paging) and a run's scenario table (filters,
conversation, metrics, judge comment, cost), hostile names and transcripts shown as text, never run."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from pytest_llmsim.history.store import GitInfo, HistoryStore
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.reporting.summary import summarize

pytest.importorskip("fastapi")

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def _records(failing: int) -> list[ScenarioRecord]:
    out = []
    for i in range(5):
        status = Status.FAILED if i < failing else Status.PASSED
        metrics = [{"name": "judge", "score": 1 if status == Status.FAILED else 3,
                    "passed": status == Status.PASSED, "reason": f"judge says {HOSTILE}",
                    "details": {"blame": "agent" if status == Status.FAILED else None}}]
        result = ScenarioResult(scenario=f"case_{i}{HOSTILE}", nodeid=f"s.yaml::case_{i}{HOSTILE}", source="s.yaml",
                                status=status, min_score=2, score=1 if status == Status.FAILED else 3,
                                comment=f"The agent was rude {HOSTILE}", metrics=metrics,
                                transcript=[{"role": "client", "text": f"hello {HOSTILE}"},
                                            {"role": "agent", "text": "one moment",
                                             "tool_calls": [{"name": "lookup", "arguments": {"q": HOSTILE},
                                                             "result": "found"}]}])
        out.append(ScenarioRecord(result=result, outcome=Outcome(status.value), cost_usd=0.0021))
    return out


@pytest.fixture
def client(tmp_path: Path) -> object:
    from fastapi.testclient import TestClient

    from pytest_llmsim.apps.cli import resolve_options
    from pytest_llmsim.apps.service.app import create_app

    database = tmp_path / "h.sqlite"
    store = HistoryStore(database)
    for n, failing in enumerate((0, 2, 1)):
        records = _records(failing)
        store.append_run(run_id=f"run-{n}-{'x' * 8}", status="completed", records=records,
                         summary=summarize(records).to_dict(), started_at=f"2026-01-0{n + 1}T00:00:00.000+00:00",
                         git=GitInfo("f" * 40, "main", True))
    resolved = resolve_options([], {"llmsim_service_db": str(database), "llmsim_log_dir": "off"},
                               invocation_dir=tmp_path)
    with TestClient(create_app(resolved), base_url="http://127.0.0.1:5000") as test_client:
        yield test_client


def test_the_runs_list_shows_each_run_and_the_chart(client: object) -> None:
    response = client.get("/view")  # type: ignore[attr-defined]
    assert response.status_code == 200 and response.headers["content-security-policy"].startswith("default-src")
    page = response.text
    assert "3 run(s) in" in page and "<svg" in page and "<polyline" in page
    table = page[page.index("<table id='runs'>"):]
    assert table.index("run-2-xx") < table.index("run-0-xx")  # newest first (the charts, oldest left, precede it)
    assert "<td>60.0%</td>" in page and "<td>100.0%</td>" in page and "ffffffffff main" in page


def test_a_run_lists_its_scenarios_with_filters_and_escapes_everything(client: object) -> None:
    page = client.get("/view/runs/run-1-xxxxxxxx").text  # type: ignore[attr-defined]
    assert "5 of 5 scenario(s)" in page
    assert "<script" not in page and "<img" not in page  # no markup from the store, no script of ours
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "tool lookup(" in page and "→ found" in page and "The agent was rude" in page
    failed = client.get("/view/runs/run-1-xxxxxxxx", params={"status": "failed"}).text  # type: ignore[attr-defined]
    assert "2 of 5 scenario(s)" in failed and "<option value='failed' selected>" in failed
    blamed = client.get("/view/runs/run-1-xxxxxxxx", params={"blame": "agent"}).text  # type: ignore[attr-defined]
    assert "2 of 5 scenario(s)" in blamed
    assert client.get("/view/runs/nope").status_code == 404  # type: ignore[attr-defined]


def test_a_scenarios_history_lists_its_verdicts_over_the_runs(client: object) -> None:
    nodeid = f"s.yaml::case_1{HOSTILE}"
    run = client.get("/view/runs/run-1-xxxxxxxx").text  # type: ignore[attr-defined]
    assert "href='/view/scenario?nodeid=s.yaml%3A%3Acase_1%3Cscript%3E" in run
    page = client.get("/view/scenario", params={"nodeid": nodeid}).text  # type: ignore[attr-defined]
    assert "its last 3 run(s), newest first" in page and "<script" not in page
    outcomes = [cell.split("'>", 1)[1] for cell in page.split("<td class='")[1:]]
    assert [o.split("<", 1)[0] for o in outcomes] == ["passed", "failed", "passed"]  # run-2, run-1, run-0
    assert client.get("/view/scenario", params={"nodeid": "nope"}).status_code == 404  # type: ignore[attr-defined]


def test_two_runs_side_by_side_with_significance_and_the_first_diverging_turn(client: object) -> None:
    page = client.get("/view/compare", params={"a": "run-0", "b": "run-1"}).text  # type: ignore[attr-defined]
    assert "pass rate 1.000 -&gt; 0.600 (-0.400" in page and "exact sign-flip permutation test" in page
    assert "passed 1/1 -&gt; 0/1" in page and "same conversation" in page
    runs = client.get("/view").text  # type: ignore[attr-defined]
    assert "href='/view/compare?a=run-1-xxxxxxxx&amp;b=run-2-xxxxxxxx'>vs previous</a>" in runs
    missing = client.get("/view/compare", params={"a": "nope", "b": "run-1"})  # type: ignore[attr-defined]
    assert missing.status_code == 404 and "History unavailable" in missing.text and "no run" in missing.text


def test_the_first_diverging_turn() -> None:
    from pytest_llmsim.apps.service.viewer import first_divergence

    same = [{"role": "client", "text": "hi"}, {"role": "agent", "text": "hello"}]
    assert first_divergence(same, same) is None
    assert first_divergence(same, [same[0], {"role": "agent", "text": "bye"}]) == 1
    assert first_divergence(same, same[:1]) == 1
    tool = [{"role": "agent", "text": "x", "tool_calls": [{"name": "a", "arguments": {"q": 1}}]}]
    other = [{"role": "agent", "text": "x", "tool_calls": [{"name": "a", "arguments": {"q": 2}}]}]
    assert first_divergence(tool, other) == 0


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.mark.slow
def test_hostile_values_never_run_in_a_real_browser(client: object, tmp_path: Path) -> None:
    """Each page, saved and loaded in headless Chromium (no Content-Security-Policy from a file: the escaping alone
    must hold): a payload that ran would have changed the title."""
    import shutil
    import subprocess

    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if browser is None:
        pytest.skip("headless Chromium is not installed")
    for name, url in (("runs", "/view"), ("run", "/view/runs/run-1-xxxxxxxx"),
                      ("compare", "/view/compare?a=run-0&b=run-1"),
                      ("scenario", f"/view/scenario?nodeid=s.yaml::case_1{quote(HOSTILE)}")):
        html = client.get(url).text  # type: ignore[attr-defined]
        html = html.replace("<title>", "<title>SAFE", 1)  # payloads: alert( made non-blocking, title-changing
        page = tmp_path / f"{name}.html"
        page.write_text(html.replace("alert(", "document.title+=('PWNED'),void("), encoding="utf-8")
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
                               "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-1000:]
        title = done.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
        assert title.startswith("SAFE") and "PWNED" not in title, (name, title)
