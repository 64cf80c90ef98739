"""The projects in examples/: each runs as shipped and catches a regression of its agent.

Each example is copied into a pytester directory as ``examples/<name>/`` and run in a subprocess the way a user
runs it from a checkout (``pytest examples/<name>``), with the scripted server playing the customer and the judge.
The judge is scripted on the transcript it is shown: a conversation that meets the criteria scores 3, any other
scores 1 with a comment naming the criterion. The agent is the example's own code (a python class, an aiohttp
service), or, for the OpenAI-compatible agent, a second scripted server standing in for the user's endpoint.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import verdict
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"
GENERIC_JUDGE = "strict reviewer of a conversation"
GENERIC_CUSTOMER = "role-playing a CUSTOMER"


def script(customer: list[str], good_transcript: str, comment: str) -> dict[str, Any]:
    """Customer and judge: the judge scores 3 when its transcript contains ``good_transcript``, else 1."""
    return {"rules": [
        {"match": {"system_contains": good_transcript}, "reply": verdict(3, "Every criterion is met.")},
        {"match": {"system_contains": GENERIC_JUDGE}, "reply": verdict(1, comment)},
        {"match": {"system_contains": GENERIC_CUSTOMER}, "replies": customer},
    ]}


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def copy_example(pytester: pytest.Pytester, name: str) -> Path:
    target = pytester.path / "examples" / name
    shutil.copytree(EXAMPLES / name, target,
                    ignore=shutil.ignore_patterns(".llmsim_cache", "__pycache__", ".pytest_cache"))
    return target


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` (which must occur exactly once) in ``path``: the copy's agent, changed."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def run(pytester: pytest.Pytester, name: str, server: ScriptedOpenAIServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"examples/{name}", "-v", "-p", "no:randomly", "-p", "no:cacheprovider",
                                         f"--llmsim-base-url={server.base_url}", "--llmsim-results=out.ndjson",
                                         *args, timeout=300)


def record(pytester: pytest.Pytester) -> dict[str, Any]:
    (line,) = (pytester.path / "out.ndjson").read_text(encoding="utf-8").splitlines()
    return json.loads(line)


def judge_prompts(server: ScriptedOpenAIServer) -> list[str]:
    return [m["content"] for r in server.requests_log() for m in r["body"]["messages"]
            if m["role"] == "system" and GENERIC_JUDGE in m["content"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a Python agent -------------------------------------------------------------------------------------------------
REFUND_CALL = ('[tool issue_refund({"order_id": 1042}) -> {"amount": "59.90 EUR", "ok": true, "refund_id": '
               '"R-1042"}] I have refunded 59.90 EUR for order 1042')
REFUND_COMMENT = "Criterion 2 is not met: the agent said it refunded order 1042 but never called issue_refund."
REFUND_CUSTOMER = ["Hi, my parcel is a week late and I would like my money back.", "It is order 1042.",
                   "Thank you, goodbye! [END_CALL]"]


def test_python_agent_example_passes_and_catches_a_dropped_tool_call(project: pytest.Pytester) -> None:
    example = copy_example(project, "python_agent")
    with ScriptedOpenAIServer(script(REFUND_CUSTOMER, REFUND_CALL, REFUND_COMMENT)) as server:
        out = run(project, "python_agent", server)
        assert out.ret == 0, out.stdout.str()
        out.stdout.fnmatch_lines(["*refunds.yaml::late_parcel_refund PASSED*"])
        row = record(project)
        assert row["tool_calls"] == ["issue_refund"] and row["score"] == 3
        assert [t["text"] for t in row["transcript"] if t["role"] == "agent"] == [
            "I'm sorry to hear that. Could you tell me your order number, please?",
            "I have refunded 59.90 EUR for order 1042; you will see it on your card within 3-5 days."]
        (prompt,) = judge_prompts(server)
        assert "2. issues the refund with the issue_refund tool and says how much was refunded" in prompt

        # The regression: a refactor drops the tool call, while the bot still says it refunded.
        edit(example / "shop_bot.py", "result = issue_refund(self.order_id)",
             'result = {"ok": True, "amount": ORDERS[self.order_id]["total"]}')
        edit(example / "shop_bot.py", '"tool_calls": [{"name": "issue_refund", "arguments": '
             '{"order_id": self.order_id}, "result": result}]', '"tool_calls": []')
        out = run(project, "python_agent", server)
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines(["*refunds.yaml::late_parcel_refund FAILED*", f"*{REFUND_COMMENT}*"])
    row = record(project)
    assert row["tool_calls"] == [] and row["score"] == 1 and row["comment"] == REFUND_COMMENT


# -- a multi-agent system -------------------------------------------------------------------------------------------
REFUND_ASK = ["Hi, my parcel is a week late and I would like a refund.", "It is order 1042.",
              "Thank you, goodbye! [END_CALL]"]
PARCEL_ASK = ["Hello, where is my parcel? Order 1043.", "Great, thanks. Bye!"]


def team_script() -> dict[str, Any]:
    """A judge that is content with any polite answer: the routing is what the deterministic metrics check."""
    return {"rules": [
        {"match": {"system_contains": GENERIC_JUDGE}, "reply": verdict(3, "Polite and helpful throughout.")},
        {"match": {"system_contains": "hiking boots"}, "replies": REFUND_ASK},
        {"match": {"system_contains": "rain jacket"}, "replies": PARCEL_ASK},
    ]}


def test_multi_agent_example_passes_and_catches_a_refund_sent_to_the_wrong_specialist(
        project: pytest.Pytester) -> None:
    example = copy_example(project, "multi_agent")
    with ScriptedOpenAIServer(team_script()) as server:
        out = run(project, "multi_agent", server)
    assert out.ret == 0, out.stdout.str()
    rows = {row["scenario"]: row for row in map(json.loads, (project.path / "out.ndjson").read_text().splitlines())}
    refund = rows["refund_request"]
    assert refund["agents"] == ["Triage", "Billing"] and refund["handoffs"] == ["Triage -> Billing"]
    assert refund["transcript"][1]["messages"][0] == {"agent": "Triage", "content": "Let me hand you to our Billing "
                                                                                    "team."}
    assert refund["tool_calls"] == ["issue_refund"]
    assert rows["where_is_my_parcel"]["agents"] == ["Triage", "Shipping"]

    # The regression: the orchestrator's routes change order, and a refund request goes to Shipping.
    billing = '    ("Billing", "refund request", ("refund", "money back", "charged", "invoice")),\n'
    shipping = '    ("Shipping", "delivery question", ("where is", "track", "delivery", "arrive", "parcel")),\n'
    edit(example / "support_team.py", billing + shipping, shipping + billing)
    with ScriptedOpenAIServer(team_script()) as server:
        out = run(project, "multi_agent", server)
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines([
        "*support.yaml::refund_request FAILED*",
        "*metric expected_agents: 0 FAILED - wrong handoff at turn 2: Triage -> Shipping, expected Triage -> "
        "Billing*",
    ])
    out.stdout.fnmatch_lines(["*metric rules [[]Billing[]]: FAILED - agent 'Billing' never spoke*"])
    out.stdout.fnmatch_lines(["*support.yaml::where_is_my_parcel PASSED*"])
    rows = {row["scenario"]: row for row in map(json.loads, (project.path / "out.ndjson").read_text().splitlines())}
    assert rows["refund_request"]["score"] == 3  # the judge was content: the routing metric caught it


# -- an HTTP agent ---------------------------------------------------------------------------------------------------
TRACKING_GOOD = ('[tool track_order({"order_id": 2077}) -> {"eta": "Friday 14 June", "state": "held at the Leipzig '
                 'depot"}] Sorry for the delay! Order 2077 is held at the Leipzig depot and will arrive on Friday 14 '
                 "June.")
TRACKING_COMMENT = "Criteria 2 and 3 are not met: the agent gave no delivery date and did not apologise."
TRACKING_CUSTOMER = ["Hello, where is my order 2077? It has not arrived.", "OK, thanks. Bye!"]


def http_example(project: pytest.Pytester) -> Path:
    """The copy, as it is: its conftest starts the service on a free port and names it in SHOP_AGENT_PORT."""
    return copy_example(project, "http_agent")


def test_http_agent_example_passes_and_catches_a_changed_reply(project: pytest.Pytester) -> None:
    example = http_example(project)
    with ScriptedOpenAIServer(script(TRACKING_CUSTOMER, TRACKING_GOOD, TRACKING_COMMENT)) as server:
        out = run(project, "http_agent", server)
        assert out.ret == 0, out.stdout.str()
        out.stdout.fnmatch_lines(["*tracking.yaml::late_parcel_status PASSED*"])
        row = record(project)
        assert row["tool_calls"] == ["track_order"] and row["ended_by"] == "agent"  # answer.done ended it

        # The regression: a terser reply loses the delivery date and the apology.
        edit(example / "agent_app.py",
             "f\"Sorry for the delay! Order {order_id} is {status['state']} and will arrive on {status['eta']}.\"",
             "f\"Order {order_id} is {status['state']}.\"")
        out = run(project, "http_agent", server)
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines(["*tracking.yaml::late_parcel_status FAILED*", f"*{TRACKING_COMMENT}*"])
    assert "Order 2077 is held at the Leipzig depot." in out.stdout.str()  # the transcript shows the new reply


def test_http_agent_example_service_stops_with_the_run(project: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The service lives as long as the run: the port is free again afterwards, so a second run (here under
    xdist) starts it anew."""
    http_example(project)
    port = free_port()
    monkeypatch.setenv("SHOP_AGENT_PORT", str(port))  # a port chosen by the user is honoured
    with ScriptedOpenAIServer(script(TRACKING_CUSTOMER, TRACKING_GOOD, TRACKING_COMMENT)) as server:
        assert run(project, "http_agent", server).ret == 0
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing is left listening
        # again, under xdist: the controller serves the agent, the workers call it (none starts its own)
        out = run(project, "http_agent", server, "-n", "2")
        assert out.ret == 0, out.stdout.str()
        out.stdout.fnmatch_lines(["*PASSED*tracking.yaml::late_parcel_status*"])


def test_http_agent_example_app_runs_on_its_own() -> None:
    """``python agent_app.py --port N`` serves the same bot the scenarios test."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "agent_app.py", "--port", str(port)], cwd=EXAMPLES / "http_agent",
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = json.dumps({"session": "s", "message": "Where is 2077?"}).encode()
        for _ in range(100):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/chat", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.load(response)["answer"]
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(process.stdout.read() if process.stdout else "agent_app.py exited")
                time.sleep(0.1)
        else:
            pytest.fail("agent_app.py did not answer")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answer["tools"][0]["name"] == "track_order" and "Friday 14 June" in answer["text"]


# -- an OpenAI-compatible agent --------------------------------------------------------------------------------------
ASKS_NUMBER = "Hello! Could you give me your order number, please?"
TRACE_OFFER = ("Thank you. I can't see the courier's schedule, but I can open a trace request for order 3310; "
               "it takes up to 2 working days. Shall I?")
GUESSING_AGENT = ["Your parcel will arrive tomorrow, guaranteed!", "It will definitely be there tomorrow.",
                  "Goodbye!"]
PARCEL_CUSTOMER = ["Hi, my parcel has not arrived after ten days.", "It is 3310.", "Yes please. Bye! [END_CALL]"]
PARCEL_COMMENT = ("Criteria 1 and 2 are not met: the agent never asked for the order number and promised a "
                  "delivery date.")


def agent_endpoint_script() -> dict[str, Any]:
    """The user's agent endpoint, played by a model that follows its system prompt."""
    return {"rules": [
        {"match": {"model": "shop-agent", "system_contains": "Ask for the order number before"},
         "replies": [ASKS_NUMBER, TRACE_OFFER, "Done. Goodbye!"]},
        {"match": {"model": "shop-agent"}, "replies": GUESSING_AGENT},
    ]}


def test_openai_agent_example_passes_and_catches_a_changed_system_prompt(project: pytest.Pytester) -> None:
    example = copy_example(project, "openai_agent")
    scenarios = example / "scenarios" / "delivery.yaml"
    good = f"Agent: {ASKS_NUMBER}\n  3. Customer: It is 3310.\n  4. Agent: {TRACE_OFFER}"
    with ScriptedOpenAIServer(agent_endpoint_script()) as agent, \
            ScriptedOpenAIServer(script(PARCEL_CUSTOMER, good, PARCEL_COMMENT)) as server:
        edit(scenarios, "base_url: http://127.0.0.1:8000/v1", f"base_url: {agent.base_url}")
        out = run(project, "openai_agent", server)
        assert out.ret == 0, out.stdout.str()
        out.stdout.fnmatch_lines(["*delivery.yaml::parcel_not_arrived PASSED*"])
        sent = agent.requests_log()
        assert len(sent) == 2 and all(r["body"]["model"] == "shop-agent" for r in sent)
        assert sent[0]["body"]["messages"][0]["content"].startswith("You are the support assistant of Parcelly")
        assert not any(r["body"]["model"] == "shop-agent" for r in server.requests_log())

        # The regression: someone "simplifies" the system prompt.
        edit(scenarios, "        Ask for the order number before you answer anything about an order.\n", "")
        out = run(project, "openai_agent", server)
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines(["*delivery.yaml::parcel_not_arrived FAILED*", f"*{PARCEL_COMMENT}*"])
    assert "Your parcel will arrive tomorrow, guaranteed!" in out.stdout.str()


# -- the examples stay out of the root suite --------------------------------------------------------------------------
def test_the_root_suite_does_not_collect_the_examples() -> None:
    completed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly"],
                               cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    collected = [line for line in completed.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/") for line in collected), completed.stdout[-3000:]
    assert "examples/" not in completed.stdout
