"""How fast the history viewer opens a big history: ``--runs`` runs x ``--scenarios`` scenarios (default the issue's
1 000 x 1 000), built with bulk SQL (one record's JSON as a template, varied per row), then each page timed as the
server renders it (the viewer's app in process, ``fastapi.testclient``): the runs list with its charts, its last
page, a run's scenario table (first and a later page, each filter), two runs compared, a scenario's history.

    python benchmarks/viewer.py                       # 1 000 runs x 1 000 scenarios (~2.1 GB, under a minute to build)
    python benchmarks/viewer.py --runs 100 --scenarios 100 --keep /tmp/h.sqlite
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_llmsim.history.store import HistoryStore, ensure_schema
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status

MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-8b")


def template() -> dict[str, object]:
    result = ScenarioResult(
        scenario="NAME", nodeid="NODEID", source="scenarios/suite.yaml", status=Status.PASSED, min_score=2, score=3,
        comment="The agent answered the refund question politely and correctly.", tags=["billing", "smoke"],
        metrics=[{"name": "judge", "score": 3, "passed": True, "reason": "", "details": {}},
                 {"name": "rules", "score": 1.0, "passed": True, "reason": "all rules held", "details": {}}],
        transcript=[{"role": "client", "text": "Hello, I would like a refund for order 42."},
                    {"role": "agent", "text": "Of course, the refund for order 42 is on its way.",
                     "tool_calls": [{"name": "issue_refund", "arguments": {"order_id": 42}, "result": {"ok": True}}]}])
    return ScenarioRecord(result=result, outcome=Outcome.PASSED, cost_usd=0.00042).to_dict()


def build(path: Path, runs: int, scenarios: int, seed: int = 7) -> float:
    """The history at ``path``, in bulk: one transaction, every row from the template's JSON."""
    rng = random.Random(seed)
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    ensure_schema(db)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA journal_mode=OFF")
    base = json.dumps(template(), ensure_ascii=False)
    failed = base.replace('"status": "passed"', '"status": "failed"').replace('"outcome": "passed"',
                                                                              '"outcome": "failed"')
    failed = failed.replace('"name": "judge", "score": 3, "passed": true',
                            '"name": "judge", "score": 1, "passed": false')
    failed = failed.replace('"score": 3, "min_score"', '"score": 1, "min_score"').replace('"blame": ""',
                                                                                          '"blame": "agent"')
    first = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    db.execute("BEGIN")
    for run in range(runs):
        model = MODELS[run % len(MODELS)]
        rate = 0.6 + 0.3 * rng.random()
        rows, passed, cost = [], 0, 0.0
        for index in range(scenarios):
            ok = rng.random() < rate
            passed += ok
            cost += 0.00042
            nodeid = f"scenarios/suite.yaml::case_{index:04d}"
            text = (base if ok else failed).replace("NODEID", nodeid).replace('"NAME"', f'"case_{index:04d}"')
            rows.append((f"run-{run:05d}", index, "passed" if ok else "failed", text, "2026-01-01T00:00:00.000+00:00",
                         nodeid))
        db.executemany("INSERT INTO results (batch_id, idx, outcome, record, finished_at, nodeid) "
                       "VALUES (?, ?, ?, ?, ?, ?)", rows)
        created = (first + datetime.timedelta(hours=6 * run)).isoformat(timespec="milliseconds")
        summary = {"success_rate": passed / scenarios, "score_statistics": {"mean": 1 + 2 * passed / scenarios},
                   "total_cost_usd": round(cost, 6)}
        db.execute("INSERT INTO batches (batch_id, status, total_scenarios, created_at, started_at, completed_at, "
                   "run_id, summary, source, git_commit, git_branch, git_clean, settings) "
                   "VALUES (?, 'completed', ?, ?, ?, ?, ?, ?, 'pytest', ?, 'main', 1, ?)",
                   (f"run-{run:05d}", scenarios, created, created, created, f"run-{run:05d}", json.dumps(summary),
                    f"{run:040x}", json.dumps({"models": {"agent": [model]}})))
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="times each page is fetched (the median is shown)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the history here instead of a temporary file")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from pytest_llmsim.apps.service.app import create_viewer_app

    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "history.sqlite"
        if not path.exists():
            seconds = build(path, args.runs, args.scenarios)
            print(f"built {args.runs} runs x {args.scenarios} scenarios in {seconds:.1f} s, "
                  f"{path.stat().st_size / 1e6:.0f} MB")
        store = HistoryStore(path)
        client = TestClient(create_viewer_app(store, "127.0.0.1", 5000), base_url="http://127.0.0.1:5000")
        last = store.runs()[-1].run_id
        pages = {
            "runs list + 3 charts (first open)": "/view",
            "runs list, page 5": "/view?page=5",
            "a run, page 1": f"/view/runs/{last}",
            "a run, page 7": f"/view/runs/{last}?page=7",
            "a run, status=failed page 2": f"/view/runs/{last}?status=failed&page=2",
            "a run, blame=agent": f"/view/runs/{last}?blame=agent",
            "a run, failed metric=judge": f"/view/runs/{last}?metric=judge",
            "a run, tag=billing page 3": f"/view/runs/{last}?tag=billing&page=3",
            "compare two runs": f"/view/compare?a=latest~1&b={last}",
            "compare, page 5": f"/view/compare?a=latest~1&b={last}&page=5",
            "a scenario's history": f"/view/scenario?nodeid=scenarios/suite.yaml::case_{args.scenarios // 2:04d}",
        }
        print(f"{'page':38} {'median s':>9} {'max s':>7} {'KB':>7}")
        for name, url in pages.items():
            times, size = [], 0
            for _ in range(args.repeat):
                begin = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - begin)
                assert response.status_code == 200, (url, response.status_code, response.text[:300])
                size = len(response.content)
            print(f"{name:38} {statistics.median(times):9.3f} {max(times):7.3f} {size / 1024:7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
