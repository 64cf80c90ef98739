"""Secrets (issue 24): every secret of every endpoint and agent of a run stays out of every file the run writes.

The endpoints and agents here are naive: they echo what they received (the Authorization header, the request
path with its ``?api-key=``/``?token=``/``?sig=`` query, header values, keys from the environment) into their
replies. Every file written is then read byte by byte (the cache's SQLite database, its compressed values too).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, scenario, verdict, write_bot
from pytest_llmsim.testing.http_agent import LoopbackAgentServer
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

SECRETS = {
    "OPENAI_API_KEY": "sk-main-7c1d2e9f4a6b8c0d",  # the customer's and the judge's endpoint key
    "MAIN_QUERY": "mainq-51e2a9d07b3c",  # ?api-key= in --llmsim-base-url
    "AGENT_KEY": "sk-agent-9b8e7d6c5f4a3b2c",  # the openai agent's api_key_env
    "AGENT_QUERY": "agentq-0f1e2d3c4b5a",  # ?token= in the openai agent's base_url
    "HTTP_KEY": "httpk-8d7c6b5a4f3e2d1c",  # the http agent's X-Api-Key header
    "HTTP_TOKEN": "httpt-1a2b3c4d5e6f7a8b",  # the token of its Authorization: Bearer header
    "HTTP_SIG": "sig-6e5d4c3b2a19f8e7",  # ?sig= in its url
}

INPUTS = ("scenarios/", "prompts/", "bots/", "tox.ini")  # what the test wrote for the run, not what it wrote


def results(sim: SimProject, name: str) -> dict[str, dict[str, Any]]:
    path = sim.path / name
    if name.endswith(".json"):
        return {r["scenario"]: r for r in json.loads(path.read_text())["results"]}
    return {}


def echoing_script() -> dict[str, Any]:
    """The customer and the judge repeat the key and the URL they were called with."""
    return {"rules": [
        {"match": {"system_contains": "EVALUATOR"},
         "reply": verdict(3, "Heard {authorization} at {path}")},
        {"match": {"system_contains": "CLIENT"},
         "replies": ["Hi, I was called with {authorization} at {path}", "Thanks, that is all."]},
        {"match": {"system_contains": "AGENT"}, "replies": ["Hello, how can I help?", "Goodbye. [END_CALL]"]},
    ]}


def cache_texts(cache_dir: Path) -> str:
    """Every value of the cache, decompressed (diskcache keeps them zlib-compressed in cache.db)."""
    with sqlite3.connect(cache_dir / "cache.db") as db:
        return "\n".join(zlib.decompress(v).decode() for (v,) in db.execute("SELECT value FROM Cache")
                         if isinstance(v, bytes))


def written_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not str(p.relative_to(root)).startswith(INPUTS))


def assert_no_secret(where: str, data: bytes) -> None:
    for name, value in SECRETS.items():
        for form in (value.encode(), value.encode("utf-16-le")):
            assert form not in data, f"{name} in {where}"


@pytest.mark.slow
def test_every_file_a_run_writes_is_free_of_every_secret(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(sim.path / "step_summary.md"))
    sim.server.set_script(echoing_script())
    write_bot(sim, """
        import os

        def reply(messages, context):
            # a python agent that knows the other agents' secrets and says them
            if len(messages) >= 3:
                return {"content": f"Keys {os.environ['AGENT_KEY']} {os.environ['HTTP_KEY']}", "end": True}
            return f"Token {os.environ['HTTP_TOKEN']} sig {os.environ['HTTP_SIG']}"
    """)

    def http_echo(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        path = http_server.requests[n - 1]["path"]
        end = " [END_CALL]" if body["turn"] >= 2 else ""
        return 200, {"reply": f"I got {headers.get('x-api-key')} and {headers.get('authorization')} at {path}{end}"}

    agent_script = {"rules": [{"match": {"last_user_contains": "Thanks"}, "reply": "Bye {authorization} [END_CALL]"},
                              {"reply": "Agent called with {authorization} at {path}"}]}
    html = importlib.util.find_spec("pytest_html") is not None
    outputs = []
    with LoopbackAgentServer(http_echo) as http_server, ScriptedOpenAIServer(agent_script) as agent_server:
        http_spec = {"http": {"url": http_server.url + "?sig=${HTTP_SIG}",
                              "body": {"message": "{{ message }}", "turn": "{{ turn }}"},
                              "headers": {"X-Api-Key": "${HTTP_KEY}", "Authorization": "Bearer ${HTTP_TOKEN}"}}}
        openai_spec = {"openai": {"base_url": agent_server.base_url + f"?token={SECRETS['AGENT_QUERY']}",
                                  "model": "shop-agent", "api_key_env": "AGENT_KEY"}}
        sim.write_scenarios("s.json", [
            scenario("h", agent=http_spec, agent_cache=True),
            scenario("o", agent=openai_spec),
            scenario("p", agent={"python": "bots.shop:reply"}, agent_cache=True),
            scenario("q"),  # the prompt agent: the customer echoes the endpoint's key to it
        ])
        base_url = f"{sim.server.base_url}?api-key={SECRETS['MAIN_QUERY']}"
        # The first run records (the customer, the judge and the cached agents), the next two replay.
        for run, mode in (("json", "once"), ("csv", "none"), ("ndjson", "none")):
            out = sim.run(f"--llmsim-record={mode}", f"--llmsim-results=out.{run}", f"--junitxml=junit-{run}.xml",
                          "-v", "-rA", f"--llmsim-chats-dir=chats-{run}", "--llmsim-readable",
                          f"--llmsim-markdown=summary-{run}.md", f"--log-file=run-{run}.log",
                          "--log-file-level=DEBUG", "--log-level=DEBUG",
                          *([f"--html=report-{run}.html"] if html else []), base_url=base_url)
            out.assert_outcomes(passed=4)
            outputs.append(out.stdout.str() + out.stderr.str())
            if mode == "once":
                recorded = results(sim, "out.json")
                sim.server.reset()
        assert sim.server.stats()["requests"] == 0  # the replays made no call to the customer's and judge's endpoint
        assert http_server.requests[0]["headers"]["x-api-key"] == SECRETS["HTTP_KEY"]  # the real values were sent
        assert agent_server.requests_log()[0]["headers"]["authorization"] == f"Bearer {SECRETS['AGENT_KEY']}"
        assert f"token={SECRETS['AGENT_QUERY']}" in agent_server.requests_log()[0]["path"]

    # what the echoes became: the placeholder, live and in the replay alike
    texts = {name: [t["text"] for t in record["transcript"]] for name, record in recorded.items()}
    assert texts["h"][1] == "I got *** and *** at /agent?sig=***"  # the whole header value is a secret
    assert texts["o"][1] == "Agent called with Bearer *** at /v1/chat/completions?token=***"
    assert texts["p"][1] == "Token *** sig ***"
    assert texts["q"][0] == "Hi, I was called with Bearer *** at /v1/chat/completions?api-key=***"
    assert recorded["q"]["comment"] == "Heard Bearer *** at /v1/chat/completions?api-key=***"
    replayed = [json.loads(line) for line in (sim.path / "out.ndjson").read_text().splitlines() if line.strip()]
    assert {r["scenario"]: [t["text"] for t in r["transcript"]] for r in replayed if "transcript" in r} == texts

    assert "***" in cache_texts(sim.path / ".llmsim_cache")
    assert_no_secret("the cache's values", cache_texts(sim.path / ".llmsim_cache").encode())
    assert_no_secret("pytest's output", "\n".join(outputs).encode())
    names = {str(p.relative_to(sim.path)) for p in written_files(sim.path)}
    expected = {"step_summary.md", "out.json", "out.csv", "out.ndjson", ".llmsim_cache/cache.db"}
    for run in ("json", "csv", "ndjson"):
        expected |= {f"junit-{run}.xml", f"summary-{run}.md", f"run-{run}.log", f"chats-{run}/chat_h_trial1.json",
                     f"chats-{run}/chat_q_trial1.txt", *([f"report-{run}.html"] if html else [])}
    assert expected <= names, sorted(expected - names)
    assert sum(name.startswith("recordings/") for name in names) == 4, names
    for path in written_files(sim.path):
        assert_no_secret(str(path.relative_to(sim.path)), path.read_bytes())


def test_a_scenario_knows_the_secrets_of_scenarios_that_have_not_run_yet(
        sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets come from the configuration and every collected scenario, not from the agents already used:
    an agent that repeats another agent's key, before that agent ever ran, gives ``***`` (so each xdist worker,
    whatever it runs, scrubs the same secrets)."""
    monkeypatch.setenv("HTTP_KEY", SECRETS["HTTP_KEY"])
    write_bot(sim, """
        import os

        def reply(messages, context):
            return {"content": f"The other agent's key is {os.environ['HTTP_KEY']}", "end": True}
    """)
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": "Done [END_CALL]"})) as http_server:
        sim.write_scenarios("s.json", [
            scenario("first", agent={"python": "bots.shop:reply"}),
            scenario("second", agent={"http": {"url": http_server.url, "headers": {"X-Api-Key": "${HTTP_KEY}"}}}),
        ])
        out = sim.run("--llmsim-results=out.json", "--llmsim-concurrency=1", "-rA")
        out.assert_outcomes(passed=2)
    assert [t["text"] for t in results(sim, "out.json")["first"]["transcript"] if t["role"] == "agent"] == [
        "The other agent's key is ***"]
    for path in written_files(sim.path):
        assert_no_secret(str(path.relative_to(sim.path)), path.read_bytes())


# -- the http agent's redirects ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_http_agent_never_follows_a_redirect_to_another_origin(sim: SimProject,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A 307 from the agent to another port must not carry the configured header there (nor anything else)."""
    monkeypatch.setenv("HTTP_KEY", SECRETS["HTTP_KEY"])
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": "stolen [END_CALL]"})) as other, \
            LoopbackAgentServer(lambda b, h, n: (307, {}, 0, {"Location": other.url})) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent={"http": {"url": agent.url,
                                                                       "headers": {"X-Api-Key": "${HTTP_KEY}"}}})])
        out = sim.run("--llmsim-results=out.json")
        out.assert_outcomes(errors=1)
        received = list(other.requests)
    assert received == []  # the other origin got nothing: no header, no body
    record = results(sim, "out.json")["a"]
    assert record["error_kind"] == "agent_error"
    assert (f"the agent at {agent.url} redirected to another origin {other.url}; llmsim does not forward "
            "configured headers across origins") in record["error_message"]
    assert SECRETS["HTTP_KEY"] not in out.stdout.str()


@pytest.mark.slow
def test_http_agent_follows_a_redirect_within_its_origin(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_KEY", SECRETS["HTTP_KEY"])

    def moved(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        if n == 1:
            return 307, {}, 0, {"Location": "/agent/v2"}
        return 200, {"reply": f"Served at {agent.requests[n - 1]['path']} [END_CALL]"}

    with LoopbackAgentServer(moved) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent={"http": {"url": agent.url,
                                                                       "headers": {"X-Api-Key": "${HTTP_KEY}"}}})])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    assert [r["path"] for r in agent.requests] == ["/agent", "/agent/v2"]
    assert agent.requests[1]["body"] == agent.requests[0]["body"]  # the same POST, re-sent
    assert agent.requests[1]["headers"]["x-api-key"] == SECRETS["HTTP_KEY"]
    assert results(sim, "out.json")["a"]["transcript"][1]["text"] == "Served at /agent/v2"


# -- the openai agent's key --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("api_key_env", ["UNSET_AGENT_KEY", "EMPTY_AGENT_KEY", "omitted"])
def test_openai_agent_without_its_key_is_a_configuration_error(sim: SimProject, monkeypatch: pytest.MonkeyPatch,
                                                               api_key_env: str) -> None:
    monkeypatch.delenv("UNSET_AGENT_KEY", raising=False)
    monkeypatch.setenv("EMPTY_AGENT_KEY", "")
    with ScriptedOpenAIServer({"rules": [{"reply": "hello [END_CALL]"}]}) as agent_server:
        spec: dict[str, Any] = {"base_url": agent_server.base_url, "model": "shop-agent"}
        if api_key_env != "omitted":
            spec["api_key_env"] = api_key_env
        sim.write_scenarios("s.json", [scenario("needs_key", agent={"openai": spec}), scenario("prompt_agent")])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, errors=1)  # the other scenario still runs
        sent = agent_server.requests_log()
    assert sent == []  # no request with a placeholder key
    record = results(sim, "out.json")["needs_key"]
    assert record["error_kind"] == "agent_error"
    message = record["error_message"]
    assert "needs_key" in message and "agent.openai.api_key_env" in message and "api_key_env: null" in message
    if api_key_env != "omitted":
        assert f"environment variable {api_key_env}, which is {'empty' if 'EMPTY' in api_key_env else 'not set'}" \
            in message


def test_openai_agent_sends_its_key_or_none_when_the_scenario_says_so(sim: SimProject,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_KEY", SECRETS["AGENT_KEY"])
    with ScriptedOpenAIServer({"rules": [{"reply": "hello [END_CALL]"}]}) as agent_server:
        keyed = {"base_url": agent_server.base_url, "model": "keyed", "api_key_env": "AGENT_KEY"}
        keyless = {"base_url": agent_server.base_url, "model": "keyless", "api_key_env": None}
        sim.write_scenarios("s.json", [scenario("a", agent={"openai": keyed}),
                                       scenario("b", agent={"openai": keyless})])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=2)
        sent = {r["body"]["model"]: r["headers"].get("authorization", "") for r in agent_server.requests_log()}
    assert sent["keyed"] == f"Bearer {SECRETS['AGENT_KEY']}"
    assert SECRETS["AGENT_KEY"] not in sent["keyless"]


# -- messages ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_replay_miss_never_tells_to_commit_the_cache(sim: SimProject) -> None:
    """The cache is local (.gitignore'd); what is committed is recordings/. A divergence caused by a changed
    tool result says so."""
    bot = """
        def reply(messages, context):
            if len(messages) >= 3:
                return {"content": "Done.", "end": True}
            return {"content": "Checking.", "tool_calls": [{"name": "stock", "arguments": {},
                                                            "result": RESULT}]}
    """
    write_bot(sim, bot.replace("RESULT", "'in stock'"))
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run("--llmsim-recordings=off").assert_outcomes(passed=1)
    write_bot(sim, bot.replace("RESULT", "'sold out'"))
    out = sim.run("--llmsim-recordings=off", "--llmsim-record=none", "--llmsim-results=out.json")
    out.assert_outcomes(errors=1)
    message = results(sim, "out.json")["a"]["error_message"]
    assert "commit the cache" not in message
    assert message.rstrip().endswith("then commit the recordings/ it writes (.llmsim_cache/ is local: keep it out "
                                      "of git).")


# -- the service -------------------------------------------------------------------------------------------------------
def test_the_service_database_logs_and_cache_never_hold_an_echoed_key(sim: SimProject) -> None:
    """``llmsim serve`` (which takes no code agents): a batch whose customer and judge echo the endpoint's key and
    its ``?api-key=`` leaves no trace of either in the service's SQLite database (WAL included), its log files,
    its cache or any response."""
    test_service = pytest.importorskip("test_service")
    sim.server.set_script(echoing_script())
    services: list[Any] = []
    try:
        service = test_service.serve(sim, services, base_url=f"{sim.server.base_url}?api-key={SECRETS['MAIN_QUERY']}",
                                     env={"OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"]})
        batch_id = service.launch({"scenarios": [scenario("a")]})
        service.wait(batch_id)
        got = service.request("GET", f"/api/batches/{batch_id}/results").json()
        service.stop()
    finally:
        for started in services:
            if started.process is not None and started.process.poll() is None:
                started.stop(kill=True)
    assert sim.server.requests_log()[0]["headers"]["authorization"] == f"Bearer {SECRETS['OPENAI_API_KEY']}"
    assert got["results"][0]["transcript"][0]["text"] == \
        "Hi, I was called with Bearer *** at /v1/chat/completions?api-key=***"
    files = [p for p in sim.path.rglob("*") if p.is_file() and not str(p.relative_to(sim.path)).startswith(INPUTS)]
    names = {p.relative_to(sim.path).parts[0] for p in files}
    assert {"logs", "results", "cache_api"} <= names, names
    for path in files:
        assert_no_secret(str(path.relative_to(sim.path)), path.read_bytes())
    assert "***" in cache_texts(sim.path / "cache_api")
    assert_no_secret("the service's cache values", cache_texts(sim.path / "cache_api").encode())
    assert_no_secret("the service's responses and output", "\n".join(service.seen).encode())
