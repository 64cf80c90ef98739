"""The history viewer on the service's app: the runs list (chart, paging) and a run's scenario table (filters,
conversation, metrics, judge comment, cost), hostile names and transcripts shown as text, never run."""

from __future__ import annotations

from pathlib import Path

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
    resolved = resolve_options(tmp_path, {"llmsim_service_db": str(database), "llmsim_log_dir": "off"})
    with TestClient(create_app(resolved), base_url="http://127.0.0.1:5000") as test_client:
        yield test_client


def test_the_runs_list_shows_each_run_and_the_chart(client: object) -> None:
    response = client.get("/view")  # type: ignore[attr-defined]
    assert response.status_code == 200 and response.headers["content-security-policy"].startswith("default-src")
    page = response.text
    assert "3 run(s) in" in page and "<svg" in page and "<polyline" in page
    assert page.index("run-2-xx") < page.index("run-0-xx")  # newest first
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
