"""The REST API: a real uvicorn server (``llmsim serve`` in a subprocess, on a free port) against the scripted
loopback LLM server, driven with a real HTTP client."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
# Import httpx's lazily loaded transport modules now: pytester's in-process runs drop modules first imported
# inside them, and a fresh copy's exceptions would no longer be the ones httpx maps (see conftest.py).
try:
    httpx.get("http://127.0.0.1:9/", timeout=0.5)
except httpx.HTTPError:
    pass

SECRET = "sk-test-NEVER-SHOWN-1234567890"
# Differ between two runs of the same scenarios (wall time, run id, file), or only pytest has (its baseline field).
VOLATILE = {"duration_seconds", "session_id", "latency_s", "nodeid", "source", "worker", "baseline"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """``llmsim serve`` in a subprocess; every response it gives is kept (to grep them for the API key)."""

    def __init__(self, project: Path, base_url: str, *options: str, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.project, self.base_url, self.options = project, base_url, options
        self.env = {**{k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "LLMSIM_API_TOKEN")},
                    "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": SECRET, **(env or {})}
        self.host = host
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Service:
        command = [sys.executable, "-m", "pytest_llmsim.apps.cli", "serve", "--host", self.host, "--port",
                   str(self.port), *self.options]
        self.process = subprocess.Popen(command, cwd=self.project, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read() if self.process.stdout else ''}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        self.seen.append(response.text)
        return response

    def launch(self, scenarios: Any) -> str:
        response = self.request("POST", "/api/batches", json=scenarios)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["status"] == "launched"
        return str(data["batch_id"])

    def wait(self, batch_id: str, status: str = "completed", timeout: float = 60,
             until: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.request("GET", f"/api/batches/{batch_id}").json()
            if (until(info) if until is not None else info["status"] == status):
                return dict(info)
            time.sleep(0.05)
        raise AssertionError(f"batch {batch_id} never got there: {info}")

    def stop(self, kill: bool = False) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        output = self.process.communicate(timeout=30)[0]
        self.seen.append(output)
        return output


@pytest.fixture
def services(sim: SimProject) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if service.process is not None and service.process.poll() is None:
            service.stop(kill=True)


def serve(sim: SimProject, services: list[Service], *options: str, base_url: str | None = None,
          **kwargs: Any) -> Service:
    service = Service(sim.path, base_url or sim.server.base_url, "-o", "llmsim_cache_dir=cache_api", *options,
                      **kwargs).start()
    services.append(service)
    return service


def assert_no_secret(sim: SimProject, service: Service) -> None:
    """The API key is in no response, log line or database row (WAL file included)."""
    files = [p for p in sim.path.rglob("*") if p.is_file() and ("logs" in p.parts or "results" in p.parts)]
    assert any(p.name.startswith("llmsim.sqlite3") for p in files) and any(p.suffix == ".jsonl" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert all(SECRET not in text for text in service.seen)


# Wall-time figures: the run's duration and its throughput at the provider's rate limits.
VOLATILE_SUMMARY = {"total_duration_seconds", "effective_rpm", "effective_tpm", "reserved_tpm", "limiter_wait_seconds"}
SCENARIOS = [scenario("good_one"), scenario("low_one"), scenario("mid_one", variables={"SEED": 7}),
             scenario("skipped_one", skip="not today"), scenario("low_expected", xfail="known rude")]


def test_a_batch_through_the_api_equals_pytest_to_the_digit(sim: SimProject, services: list[Service]) -> None:
    sim.write_scenarios("shop.json", SCENARIOS)
    sim.run("--llmsim-results=pytest.json", "--llmsim-cache-dir=cache_pytest", "--llmsim-recordings=rec_pytest")
    expected = json.loads((sim.path / "pytest.json").read_text())
    service = serve(sim, services)
    batch_id = service.launch({"scenarios": SCENARIOS})
    status = service.wait(batch_id)
    assert (status["progress"], status["total_scenarios"], status["completed_scenarios"]) == (100.0, 5, 5)
    assert status["failed_scenarios"] == 1 and status["completed_at"] >= status["started_at"]

    got = service.request("GET", f"/api/batches/{batch_id}/results").json()
    assert got["total_results"] == 5 and got["batch_id"] == batch_id

    def strip(row: dict[str, Any]) -> dict[str, Any]:
        clean = {k: v for k, v in row.items() if k not in VOLATILE}
        clean["transcript"] = [{k: v for k, v in t.items() if k not in VOLATILE} for t in row["transcript"]]
        return clean

    assert [strip(r) for r in got["results"]] == [strip(r) for r in expected["results"]]
    ndjson = service.request("GET", f"/api/batches/{batch_id}/results", params={"format": "ndjson"})
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in ndjson.text.splitlines()] == got["results"]
    table = service.request("GET", f"/api/batches/{batch_id}/results", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [(r["scenario"], r["outcome"], r["score"], r["cost_usd"]) for r in rows] == \
        [(r["scenario"], r["outcome"], str(r["score"] if r["score"] is not None else ""), str(r["cost_usd"]))
         for r in expected["results"]]

    summary = service.request("GET", f"/api/batches/{batch_id}/summary").json()
    assert summary.pop("batch_id") == batch_id and summary.pop("status") == "completed"
    assert summary.pop("ok") is False and status["ok"] is False  # low_one failed
    skip = VOLATILE_SUMMARY
    assert {k: v for k, v in summary.items() if k not in skip} == \
        {k: v for k, v in expected["summary"].items() if k not in skip}
    cost = service.request("GET", f"/api/batches/{batch_id}/cost").json()
    for key in ("total_cost_usd", "total_tokens", "total_requests", "average_cost_per_request"):
        assert cost[key] == expected["summary"][key] and (key == "total_cost_usd" or cost[key] > 0)
    listing = service.request("GET", "/api/batches").json()
    assert listing["total_count"] == 1 and listing["batches"][0]["batch_id"] == batch_id
    service.stop()
    assert_no_secret(sim, service)


def slow_llm(delay: float) -> ScriptedOpenAIServer:
    """The default script with every reply ``delay`` seconds late (a batch that takes a while)."""
    script = default_script()
    for rule in script["rules"]:
        rule["delay"] = delay
    return ScriptedOpenAIServer(script)


def test_two_batches_share_one_concurrency_limit_and_cancel(sim: SimProject, services: list[Service]) -> None:
    with slow_llm(0.02) as llm:
        service = serve(sim, services, "--concurrency", "1", base_url=llm.base_url)
        first = service.launch([scenario(f"a{i}") for i in range(3)])
        second = service.launch([scenario(f"b{i}") for i in range(3)])
        for batch_id in (first, second):
            assert service.wait(batch_id)["completed_scenarios"] == 3
        assert llm.stats()["peak_in_flight"] == 1  # one limit for both batches

        slow = service.launch([scenario(f"c{i}") for i in range(20)])
        service.wait(slow, until=lambda info: info["completed_scenarios"] >= 1)
        assert service.request("DELETE", f"/api/batches/{slow}").json()["status"] == "cancelling"
        info = service.wait(slow, "cancelled", timeout=20)
        assert 1 <= info["completed_scenarios"] < 20


def test_a_batch_interrupted_by_a_killed_server_resumes_without_rerunning(
        sim: SimProject, services: list[Service]) -> None:
    with slow_llm(0.03) as llm:
        service = serve(sim, services, "--concurrency", "1", base_url=llm.base_url)
        batch_id = service.launch([scenario(f"s{i}") for i in range(12)])
        service.wait(batch_id, until=lambda info: info["completed_scenarios"] >= 3)
        service.stop(kill=True)
        restarted = serve(sim, services, "--concurrency", "1", base_url=llm.base_url)
        info = restarted.wait(batch_id, "interrupted", timeout=5)
        before = restarted.request("GET", f"/api/batches/{batch_id}/results").json()["results"]
        assert info["completed_scenarios"] == len(before) and 3 <= len(before) < 12
        calls = llm.stats()["requests"]
        resumed = restarted.request("POST", f"/api/batches/{batch_id}/resume").json()
        assert resumed["remaining_scenarios"] == 12 - len(before)
        assert restarted.wait(batch_id)["completed_scenarios"] == 12
        after = restarted.request("GET", f"/api/batches/{batch_id}/results").json()["results"]
        assert [r["scenario"] for r in after] == [f"s{i}" for i in range(12)]
        kept = {r["scenario"]: r for r in after}
        assert all(kept[r["scenario"]] == r for r in before)  # not re-run: the very same records
        # only the unfinished conversations called the LLM (7 calls each; one may have been cut off mid-way)
        new_calls = llm.stats()["requests"] - calls
        assert 7 * (12 - len(before) - 1) <= new_calls <= 7 * (12 - len(before))
        assert restarted.request("POST", f"/api/batches/{batch_id}/resume").status_code == 409


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_announces_each_conversation_and_a_dead_one_never_fails_the_batch(
        sim: SimProject, services: list[Service]) -> None:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        service = serve(sim, services, env={"WEBHOOK_URL": f"http://127.0.0.1:{hook.server_address[1]}/hook"})
        batch_id = service.launch([scenario("good_one"), scenario("low_one")])
        service.wait(batch_id)
        info = service.wait(batch_id, until=lambda info: info["webhook_deliveries"] == 2, timeout=10)
        assert info["webhook_failures"] == 0
    finally:
        hook.shutdown()
    assert sorted(p["scenario"] for p in _Hook.received) == ["good_one", "low_one"]
    assert all({"session_id", "batch_id", "scenario", "timestamp"} <= set(p) and p["batch_id"] == batch_id
               for p in _Hook.received)
    service.stop()

    dead = serve(sim, services, "-o", "llmsim_webhook_timeout=0.5", "-o", "llmsim_webhook_retries=1",
                 env={"WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/gone"})
    batch_id = dead.launch([scenario("good_one"), scenario("mid_one")])
    info = dead.wait(batch_id, until=lambda info: info["webhook_failures"] == 2 and info["status"] == "completed",
                     timeout=20)
    assert info["status"] == "completed" and info["failed_scenarios"] == 0
    dead.stop()
    errors = "".join(p.read_text() for p in (sim.path / "logs").glob("error_*.log"))
    assert errors.count('"webhook failed"') == 2


def test_bad_requests_are_422_404_413_and_no_request_names_a_server_path(
        sim: SimProject, services: list[Service]) -> None:
    service = serve(sim, services, "-o", "llmsim_max_request_bytes=4096")
    bad = service.request("POST", "/api/batches", json={"scenarios": [scenario("a"), {"name": "b", "min_score": 7}]})
    assert bad.status_code == 422
    assert ["body", "scenarios", 1, "min_score"] in [e["loc"] for e in bad.json()["detail"]]
    for body, loc in (([], ["body"]), ({"scenario": []}, ["body", "scenario"]), ("text", ["body"]),
                      ([scenario("a"), scenario("a")], ["body", 1, "name"]),
                      ([scenario("a", agent={"python": "os:system"})], ["body", 0, "agent", "python"]),
                      ([scenario("a", agent={"langgraph": "os:system"})], ["body", 0, "agent", "langgraph"]),
                      ([scenario("a", evaluate=[{"rouge": {"reference_file": "/etc/passwd"}}])],
                       ["body", 0, "evaluate", 0, "rouge", "reference_file"]),
                      ([scenario("a", client={"template": "../../secret.j2"})], ["body", 0, "client", "template"])):
        answer = service.request("POST", "/api/batches", json=body)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == loc, (body, answer.text)
    garbage = service.request("POST", "/api/batches", content=b"{not json",
                              headers={"content-type": "application/json"})
    assert garbage.status_code == 422
    big = service.request("POST", "/api/batches", json=[scenario("a", description="x" * 5000)])
    assert big.status_code == 413
    for method, path in (("GET", "/api/batches/nope"), ("GET", "/api/batches/nope/results"),
                         ("GET", "/api/batches/nope/summary"), ("GET", "/api/batches/nope/cost"),
                         ("DELETE", "/api/batches/nope"), ("POST", "/api/batches/nope/resume")):
        assert service.request(method, path).status_code == 404
    for hostile in ("x' OR '1'='1", "1; DROP TABLE batches; --", "%' OR batch_id LIKE '%"):  # ids are parameters
        for method, path in (("GET", ""), ("GET", "/results"), ("DELETE", ""), ("POST", "/resume")):
            answer = service.request(method, f"/api/batches/{hostile}{path}")
            assert answer.status_code == 404, (hostile, path, answer.text)
    wrong_format = service.request("GET", "/api/batches/nope/results", params={"format": "xml"})
    assert wrong_format.status_code == 422 and wrong_format.json()["detail"][0]["loc"] == ["query", "format"]
    assert service.request("GET", "/api/batches").json()["total_count"] == 0  # nothing was launched


def test_any_address_but_loopback_needs_a_token(sim: SimProject, services: list[Service]) -> None:
    refused = subprocess.run([sys.executable, "-m", "pytest_llmsim.apps.cli", "serve", "--host", "0.0.0.0", "--port",
                              str(free_port())], cwd=sim.path, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "LLMSIM_API_TOKEN"})
    assert refused.returncode == 2 and "LLMSIM_API_TOKEN" in refused.stderr
    token = "tok-" + "x" * 20
    service = serve(sim, services, host="0.0.0.0", env={"LLMSIM_API_TOKEN": token})
    assert service.request("GET", "/api/batches").status_code == 401
    wrong = service.request("GET", "/api/batches", headers={"Authorization": "Bearer tok-wrong"})
    assert wrong.status_code == 401
    right = service.request("GET", "/api/batches", headers={"Authorization": f"Bearer {token}"})
    assert right.status_code == 200
    # bound to a wildcard address the token protects: any Host (the machine's names), but no foreign Origin
    named = service.request("GET", "/api/batches", headers={"Authorization": f"Bearer {token}",
                                                            "host": f"llmsim.example:{service.port}"})
    assert named.status_code == 200
    foreign = service.request("POST", "/api/batches", json=[scenario("a")],
                              headers={"Authorization": f"Bearer {token}", "origin": "http://evil.example"})
    assert foreign.status_code == 403
    same = service.request("GET", "/api/batches", headers={"Authorization": f"Bearer {token}",
                                                           "host": f"llmsim.example:{service.port}",
                                                           "origin": f"http://llmsim.example:{service.port}"})
    assert same.status_code == 200
    form = service.request("POST", "/api/batches", content=b"a=b", headers={
        "Authorization": f"Bearer {token}", "content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert service.request("GET", "/api/health").status_code == 200
    status = subprocess.run([sys.executable, "-m", "pytest_llmsim.apps.cli", "status", "nope", "--api-url",
                             service.url],
                            capture_output=True, text=True, env={**os.environ, "LLMSIM_API_TOKEN": token}, timeout=60)
    assert status.returncode == 2 and "not found" in status.stderr


def test_cli_status_and_fetch_talk_to_the_service(sim: SimProject, services: list[Service]) -> None:
    service = serve(sim, services)
    batch_id = service.launch([scenario("good_one")])
    service.wait(batch_id)
    env = {k: v for k, v in os.environ.items() if k != "LLMSIM_API_TOKEN"}
    status = subprocess.run([sys.executable, "-m", "pytest_llmsim.apps.cli", "status", batch_id, "--api-url",
                             service.url],
                            capture_output=True, text=True, env=env, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "completed"
    fetched = subprocess.run([sys.executable, "-m", "pytest_llmsim.apps.cli", "fetch", batch_id, "--format", "ndjson",
                              "--output", "got.ndjson", "--api-url", service.url],
                             cwd=sim.path, capture_output=True, text=True, env=env, timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads((sim.path / "got.ndjson").read_text())["score"] == 3


def test_fuzzing_the_api_from_its_openapi_schema_finds_no_server_error(
        sim: SimProject, services: list[Service]) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    if not schemathesis.exists():
        pytest.skip("schemathesis is not installed")
    service = serve(sim, services)
    done = subprocess.run([str(schemathesis), "run", f"{service.url}/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "12", "--no-color"], capture_output=True, text=True, timeout=300,
                          cwd=sim.path)
    assert done.returncode == 0, done.stdout[-3000:]


# -- security of the default server (issues 24.9, 24.10) -------------------------------------------------------------
def test_no_metric_option_naming_a_server_file_in_any_shape_of_the_metric_list(
        sim: SimProject, services: list[Service]) -> None:
    """The list form ``[name, options]`` the scenario model also accepts was let through: the server read the file
    of the client's choosing (an existence and content oracle; /dev/zero exhausted its memory)."""
    service = serve(sim, services)
    for evaluate, loc in (
            ([["rouge", {"reference_file": "/etc/passwd", "threshold": 0.5}]], [0, "rouge", "reference_file"]),
            ((["judge", ["rouge", {"reference_file": "/dev/zero"}]]), [1, "rouge", "reference_file"]),
            ([{"rouge": {"reference_file": "/etc/passwd"}}], [0, "rouge", "reference_file"]),
            ([{"rouge": {"reference": "x", "base_dir": "/etc"}}], [0, "rouge", "base_dir"]),
            ([["my_metric", {"rubricPath": "/etc/shadow"}]], [0, "my_metric", "rubricPath"]),
            ([["my_metric", {"sources": [{"file": "/etc/hosts"}]}]], [0, "my_metric", "sources", 0, "file"])):
        answer = service.request("POST", "/api/batches", json=[scenario("a", evaluate=evaluate)])
        assert answer.status_code == 422, (evaluate, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["body", 0, "evaluate", *loc], answer.text
        assert "server file" in answer.json()["detail"][0]["msg"]
    assert service.request("GET", "/api/batches").json()["total_count"] == 0
    allowed = service.request("POST", "/api/batches",
                              json=[scenario("a", evaluate=[["rouge", {"reference": "Your order is confirmed"}]])])
    assert allowed.status_code == 200, allowed.text


def test_the_default_server_refuses_requests_a_web_page_can_make(sim: SimProject, services: list[Service]) -> None:
    """A page in the user's browser could POST text/plain or a form (no preflight) to the tokenless loopback server
    and launch batches, and read results through DNS rebinding (a foreign Host): Content-Type, Origin and Host are
    checked on every request."""
    service = serve(sim, services)
    body = json.dumps([scenario("a")])
    port = service.port
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
                    {"content-type": "multipart/form-data; boundary=x"}, {}):
        answer = service.request("POST", "/api/batches", content=body, headers=headers)
        assert answer.status_code == 415, (headers, answer.text)
        assert "application/json" in answer.json()["detail"]
    for origin in ("http://evil.example", "null", f"http://evil.example:{port}", f"http://127.0.0.1:{port + 1}",
                   "file://", f"ftp://localhost:{port}"):
        launch = service.request("POST", "/api/batches", json=[scenario("a")], headers={"origin": origin})
        assert launch.status_code == 403, (origin, launch.text)
        assert "cross-origin" in launch.json()["detail"]
        assert service.request("GET", "/api/batches", headers={"origin": origin}).status_code == 403
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "localhost", "127.0.0.1.nip.io"):
        answer = service.request("GET", "/api/batches", headers={"host": host})
        assert answer.status_code == 421, (host, answer.text)
        assert "does not name this server" in answer.json()["detail"]
        assert service.request("GET", "/api/health", headers={"host": host}).status_code == 421
    assert service.request("GET", "/api/batches").json()["total_count"] == 0  # nothing was launched
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert service.request("GET", "/api/batches", headers={"host": host}).status_code == 200, host
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        launched = service.request("POST", "/api/batches", json=[scenario("a")], headers={"origin": origin})
        assert launched.status_code == 200, (origin, launched.text)
    charset = service.request("POST", "/api/batches", content=body,
                              headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text


def test_health_answers_while_a_batch_runs_a_runaway_regex(sim: SimProject, services: list[Service]) -> None:
    """``(a+)+$`` on 34 a's and '!' froze the whole service (``re`` holds the interpreter): the regex is matched at
    once now, a pattern that still backtracks is stopped after a second, and the server answers meanwhile."""
    script = {"rules": [
        {"match": {"system_contains": "EVALUATOR"},
         "reply": json.dumps({"score": 3, "comment": "Fine by every criterion."})},
        {"match": {"system_contains": "AGENT"}, "replies": ["a" * 34 + "!", "Bye. [END_CALL]"]},
        {"match": {"system_contains": "CLIENT"}, "replies": ["Hello", "Thanks"]},
    ]}
    with ScriptedOpenAIServer(script) as llm:
        service = serve(sim, services, "--concurrency", "1", base_url=llm.base_url)
        batch_id = service.launch(
            [scenario("nested", evaluate=["judge", {"rules": {"regex": "(a+)+$"}}])]
            + [scenario(f"runaway_{i}", evaluate=["judge", {"rules": {"not_regex": "(a|aa)+$"}}]) for i in range(3)])
        answered, slowest = 0, 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            health = httpx.get(f"{service.url}/api/health", timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            assert health.status_code == 200
            answered += 1
            if service.request("GET", f"/api/batches/{batch_id}").json()["status"] == "completed":
                break
            time.sleep(0.1)
        info = service.wait(batch_id, timeout=5)
    assert answered >= 5 and slowest < 1.0, (answered, slowest)
    assert (info["errored_scenarios"], info["failed_scenarios"], info["ok"]) == (3, 4, False)
    rows = service.request("GET", f"/api/batches/{batch_id}/results").json()["results"]
    assert [r["outcome"] for r in rows] == ["failed", "error", "error", "error"]
    assert "scenario 'runaway_0': metric 'rules': not_regex '(a|aa)+$' took over 1 s" in rows[1]["error_message"]


# -- the docs' example (issue 25.7; it was the README's) -----------------------------------------------------------
SERVICE_DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def readme_launch_body() -> Any:
    """The JSON body of the ``curl -X POST .../api/batches`` example in docs/service.md, as a shell passes it."""
    import re
    import shlex

    section = SERVICE_DOC.read_text(encoding="utf-8")
    assert section.startswith("# The service\n")
    command = next(block for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
                   if "-X POST" in block).split("\n# ", 1)[0]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:4] == ["curl", "-s", "-X", "POST"] and words[4].endswith("/api/batches")
    assert words[words.index("-H") + 1] == "Content-Type: application/json"
    return json.loads(words[words.index("-d") + 1])


def test_the_readmes_service_example_runs_and_a_batch_of_errors_is_not_ok(
        sim: SimProject, services: list[Service]) -> None:
    """The service page's curl example (once the README's) errored on every scenario with the shipped prompts
    ('agent.j2' uses undefined variable 'CURRENT_DATE') while the batch read ``completed``: it runs clean now, in the
    repository's sample project and in a folder with the package's generic prompts, and a batch whose scenarios
    errored says ``ok: false``."""
    import shutil

    shipped = Path(__file__).resolve().parents[2] / "prompts"
    shutil.rmtree(sim.path / "prompts")
    shutil.copytree(shipped, sim.path / "prompts")
    script = {"rules": [
        {"match": {"system_contains": "strict"}, "reply": json.dumps({"score": 3, "comment": "Order is confirmed."})},
        {"match": {"system_contains": "CUSTOMER"}, "replies": ["Two chicken fillets to Moscow.", "Yes. Bye!"]},
        {"match": {}, "replies": ["Two chicken fillets to Moscow, 1-2 days. Confirm?", "Confirmed. Bye [END_CALL]"]},
    ]}
    body = readme_launch_body()
    with ScriptedOpenAIServer(script) as llm:
        for prompts in ("prompts", "no-such-folder"):  # the sample project's prompts, the package's generic ones
            service = serve(sim, services, "-o", f"llmsim_prompts_dir={prompts}", base_url=llm.base_url)
            info = service.wait(service.launch(body))
            rows = service.request("GET", f"/api/batches/{info['batch_id']}/results").json()["results"]
            assert [(r["outcome"], r["error_message"]) for r in rows] == [("passed", "")] * len(rows), rows
            assert info["ok"] is True and info["errored_scenarios"] == 0
            summary = service.request("GET", f"/api/batches/{info['batch_id']}/summary").json()
            assert summary["ok"] is True
            service.stop()
        # the old example: only PERSONALITY and SEED; every scenario errors, and the batch is not ok
        service = serve(sim, services, base_url=llm.base_url)
        info = service.wait(service.launch({"scenarios": [
            {"name": "calm_reorder", "variables": {"PERSONALITY": "calm", "SEED": 12345}}]}))
    assert (info["status"], info["ok"], info["errored_scenarios"], info["failed_scenarios"]) == \
        ("completed", False, 1, 1)
    summary = service.request("GET", f"/api/batches/{info['batch_id']}/summary").json()
    assert summary["ok"] is False and summary["errored_scenarios"] == 1
