"""The ``llmsim`` fixture: conversations from Python tests, through real inner sessions against the scripted server.

The inner test files define their agent in memory (no import path); the customer and the judge are the scripted
server, which plays the package's generic templates (``persona``/``goal``/``criteria``).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, verdict

CUSTOMER = ["Hi, my parcel is late and I want a refund.", "Thanks, that is all. [END_CALL]"]


def script() -> dict[str, Any]:
    """The judge gives 1 when a criterion says LOW-SCORE, else 3; every other request is the customer."""
    return {"rules": [
        {"match": {"system_contains": "LOW-SCORE"}, "reply": verdict(1, "No refund was offered.")},
        {"match": {"system_contains": "strict reviewer"}, "reply": verdict(3, "Refund offered politely.")},
        {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "Refund offered politely.")},
        {"replies": CUSTOMER},
    ]}


BOT = '''
import pytest

CALLS = []

def support_bot(messages, context):
    last = messages[-1]["content"] if messages else ""
    if "refund" in last:
        return {"content": "I am sorry. I have issued a refund for your parcel.",
                "tool_calls": [{"name": "issue_refund", "arguments": {"order": 42}, "result": {"ok": True}}]}
    return "Glad I could help."

FIELDS = dict(persona="an angry customer whose parcel is late", goal="get a refund",
              criteria=["offers a refund or a voucher", "never promises a date it cannot keep"])
'''


def write_tests(sim: SimProject, body: str, name: str = "test_bot.py") -> Path:
    shutil.rmtree(sim.path / "prompts", ignore_errors=True)  # the package's generic templates
    sim.server.set_script(script())
    path = sim.path / name
    path.write_text(BOT + textwrap.dedent(body), encoding="utf-8")
    return path


def results(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    data = json.loads((sim.path / name).read_text())
    return {r["nodeid"]: r for r in data["results"]}


SYNC_TEST = '''
def test_refund(llmsim):
    result = llmsim.run_sync(**FIELDS, agent=support_bot)
    assert result.score == 3, result.comment
    assert result.tool_calls == ["issue_refund"]
    assert result.status == "passed" and result.scenario == "test_refund"
'''


@pytest.mark.slow
def test_run_sync_with_an_in_memory_agent_is_exported_like_a_scenario(sim: SimProject) -> None:
    write_tests(sim, SYNC_TEST)
    out = sim.run("test_bot.py", "-v", "--llmsim-results=out.json")
    out.assert_outcomes(passed=1)
    out.stdout.fnmatch_lines(["*test_bot.py::test_refund PASSED (score 3, min 2)*",
                              "*test_bot.py::test_refund * 3 (min 2) *passed*"])
    record = results(sim)["test_bot.py::test_refund"]
    assert record["score"] == 3 and record["status"] == "passed" and record["outcome"] == "passed"
    assert record["tool_calls"] == ["issue_refund"]
    agent_turns = [t for t in record["transcript"] if t["role"] == "agent"]
    assert agent_turns[0]["tool_calls"][0]["name"] == "issue_refund"
    # the agent is the test's own object: only the customer and the judge went to the endpoint
    systems = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"] if m["role"] == "system"]
    assert systems and not any("customer service assistant" in s for s in systems)


ASYNC_TEST = '''
import asyncio

@pytest.fixture
def anyio_backend():
    return "asyncio"

async def async_bot(messages):
    await asyncio.sleep(0)
    return support_bot(messages, None)

@pytest.mark.anyio
async def test_async_refund(llmsim):
    result = await llmsim.run(**FIELDS, agent=async_bot)
    assert result.score == 3
    assert "issue_refund" in result.tool_calls
    second = await llmsim.run(**FIELDS, agent=support_bot, min_score=3)
    assert second.scenario == "test_async_refund-2"
'''


def test_await_run_in_an_anyio_test_and_several_conversations_per_test(sim: SimProject) -> None:
    write_tests(sim, ASYNC_TEST)
    out = sim.run("test_bot.py", "--llmsim-results=out.json")
    out.assert_outcomes(passed=1)
    records = results(sim)
    assert list(records) == ["test_bot.py::test_async_refund", "test_bot.py::test_async_refund[llmsim-2]"]
    assert records["test_bot.py::test_async_refund[llmsim-2]"]["min_score"] == 3
    assert all(r["score"] == 3 and r["outcome"] == "passed" for r in records.values())


FAILING_TEST = '''
def test_low(llmsim):
    result = llmsim.run_sync(persona="a customer", goal="a refund", criteria=["LOW-SCORE: offers a refund"],
                             agent=support_bot)
    assert result.score >= 2, result.comment
'''


def test_a_failing_assertion_shows_the_transcript(sim: SimProject) -> None:
    write_tests(sim, FAILING_TEST)
    out = sim.run("test_bot.py", "--junitxml=junit.xml", "-o", "junit_family=xunit1")
    out.assert_outcomes(failed=1)
    out.stdout.fnmatch_lines([
        "*AssertionError: No refund was offered.*",
        "*Captured llmsim transcript call*",
        "scenario 'test_low': score 1 (min_score 2)",
        "judge: No refund was offered.",
        "tools called: issue_refund",
        "*Customer: Hi, my parcel is late and I want a refund.*",
        "*[tool issue_refund*I have issued a refund*",
    ])
    junit = (sim.path / "junit.xml").read_text()
    assert '<property name="score" value="1"' in junit
    assert "I have issued a refund" in junit  # the failing case carries the transcript


@pytest.mark.slow
def test_the_html_row_of_the_test_shows_its_chats(sim: SimProject) -> None:
    write_tests(sim, SYNC_TEST + '''
def test_twice(llmsim):
    llmsim.run_sync(**FIELDS, agent=support_bot)
    llmsim.run_sync(**FIELDS, agent=support_bot, name="second_chat")
''')
    sim.run("test_bot.py", "--html=report.html").assert_outcomes(passed=2)
    text = (sim.path / "report.html").read_text(encoding="utf-8")
    blob = re.search(r'data-jsonblob="([^"]*)"', text)
    assert blob is not None
    tests = json.loads(html.unescape(blob.group(1)))["tests"]
    chats = {nodeid: "".join(e["content"] for e in entries[0]["extras"] if e["format_type"] == "html")
             for nodeid, entries in tests.items()}
    single = chats["test_bot.py::test_refund"]
    assert "I have issued a refund for your parcel." in single and "issue_refund" in single
    assert "score 3 / min 2" in single
    assert any('class="col-score">3 (min 2)</td>' in cell for cell in tests["test_bot.py::test_refund"][0]
               ["resultsTableRow"])
    assert chats["test_bot.py::test_twice"].count("I have issued a refund for your parcel.") == 2


@pytest.mark.slow
def test_the_cache_is_shared_a_replay_makes_no_request(sim: SimProject) -> None:
    write_tests(sim, SYNC_TEST)
    sim.run("test_bot.py").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] > 0
    sim.server.reset()
    sim.run("test_bot.py", "--llmsim-record=none", "--llmsim-results=out.json").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == 0
    assert results(sim)["test_bot.py::test_refund"]["cached"] is True


def test_an_agent_that_raises_is_an_error_with_its_traceback(sim: SimProject) -> None:
    write_tests(sim, '''
def broken_bot(messages):
    return helper(messages)

def helper(messages):
    raise RuntimeError("database is down")

def test_crash(llmsim):
    result = llmsim.run_sync(**FIELDS, agent=broken_bot)
    CALLS.append(result)  # never reached: an error result raises
''')
    out = sim.run("test_bot.py", "--llmsim-results=out.json")
    out.assert_outcomes(failed=1)
    out.stdout.fnmatch_lines([
        "*ScenarioRunError: agent_error: test_bot.py::test_crash agent turn *: the python agent "
        "'test_bot:broken_bot' raised RuntimeError: database is down",
        "*in broken_bot*", "*return helper(messages)*", "*in helper*", "*RuntimeError: database is down*",
    ])
    record = results(sim)["test_bot.py::test_crash"]
    assert record["status"] == "error" and record["error_kind"] == "agent_error" and record["score"] is None
    assert not any("strict reviewer" in m["content"] for r in sim.server.requests_log()
                   for m in r["body"]["messages"])  # never judged


@pytest.mark.parametrize(("call", "expected"), [
    ('criteria="x"', "field 'criteria': must be a list of strings (got 'x')"),
    ("min_score=5", "field 'min_score': Input should be less than or equal to 3"),
    ("persna='typo'", "field 'persna': unknown field"),
    ("tags=['slow']", "field 'tags' is for scenario files; in a Python test use pytest markers"),
    ("agent=42", "field 'agent': must be a callable, a class, an agent_factory function or a spec mapping"),
    ("agent={'python': 'nope'}", "field 'agent.python': must be 'package.module:name'"),
])
def test_a_bad_field_raises_naming_it(sim: SimProject, call: str, expected: str) -> None:
    write_tests(sim, f'''
from pytest_llmsim.errors import ScenarioError

def test_bad(llmsim):
    with pytest.raises(ScenarioError) as info:
        llmsim.run_sync(**{{**dict(persona="p", goal="g", agent=support_bot), **dict({call})}})
    CALLS.append(str(info.value))
    print("MESSAGE:", info.value)
''')
    out = sim.run("test_bot.py", "-s")
    out.assert_outcomes(passed=1)
    out.stdout.fnmatch_lines([f"*MESSAGE: test_bot.py::test_bad: llmsim.run(): *{expected}*"])
    assert sim.server.stats()["requests"] == 0


@pytest.mark.slow
def test_the_fixture_works_under_xdist(sim: SimProject) -> None:
    write_tests(sim, SYNC_TEST + '''
def test_other(llmsim):
    assert llmsim.run_sync(**FIELDS, agent=support_bot, name="other").score == 3
''')
    out = sim.run("test_bot.py", "-n", "2", "--llmsim-results=out.json")
    out.assert_outcomes(passed=2)
    records = results(sim)
    assert set(records) == {"test_bot.py::test_refund", "test_bot.py::test_other"}
    assert {r["worker"] for r in records.values()} <= {"gw0", "gw1"}
    assert all(r["score"] == 3 for r in records.values())
