"""Simulate, judge and gate: pass, fail below the minimum, errors distinct from failures."""

from __future__ import annotations

from conftest import AGENT_REPLIES, SimProject, default_script, scenario


def test_passing_scenario_shows_its_score(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("calm_reorder")])
    result = sim.run("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*s.json::calm_reorder PASSED (score 3, min 2)*"])


def test_score_below_minimum_fails_with_verdict_not_traceback(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("low_service"), scenario("fine")])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*s.json::low_service FAILED (score 1, min 2)*",
        "*scenario 'low_service' scored 1 (min_score 2)*",
        "*judge: The agent was rude.*",
        "*ended by agent*",
        "*Captured llmsim transcript call*",
        "*1. Customer: Hi, I would like chicken fillet.",
        "*6. Agent: Your order is confirmed. Goodbye!",
    ])
    out = result.stdout.str()
    assert "Traceback" not in out and "[END_CALL]" not in out


def test_a_failure_prints_its_conversation_once(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("low_a"), scenario("low_b"), scenario("fine")])
    result = sim.run("-q")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    # Every turn of each failed conversation once (the transcript section), not again as "last turns".
    for turn in ("Customer: Hi, I would like chicken fillet.", "Agent: Your order is confirmed. Goodbye!",
                 "[call ended by agent: the agent ended the call]"):
        assert out.count(turn) == 2, (turn, out)
    assert out.count("Captured llmsim transcript call") == 2


def test_min_score_precedence_scenario_then_option_then_ini(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("mid_a"), scenario("mid_b", min_score=3)])
    sim.run().assert_outcomes(passed=1, failed=1)  # default 2: mid_a passes; mid_b needs 3
    sim.write_ini(llmsim_min_score="3")
    sim.run().assert_outcomes(failed=2)
    sim.run("--llmsim-min-score=1").assert_outcomes(passed=1, failed=1)  # scenario's 3 still wins for mid_b
    sim.write_scenarios("s.json", [scenario("mid_a", min_score=1)])
    sim.run().assert_outcomes(passed=1)


def test_unreachable_endpoint_is_an_error_naming_the_url(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_max_retries=0", base_url="http://127.0.0.1:9/v1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of scenario: a*",
                                 "*s.json::a client turn 1: cannot connect to http://127.0.0.1:9/v1*"])


def test_secret_key_is_sent_but_never_stored(sim: SimProject, monkeypatch) -> None:
    secret = "sk-test-SECRET-do-not-leak-123"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("-v", "--junitxml=junit.xml", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    assert any(r["headers"].get("authorization") == f"Bearer {secret}" for r in sim.server.requests_log())
    assert secret not in result.stdout.str()
    for path in sim.path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_credentials_in_the_base_url_are_redacted_everywhere(sim: SimProject) -> None:
    secret = "pw-SECRET-in-url-789"
    url = sim.server.base_url.replace("http://", f"http://token:{secret}@")
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-v", "--junitxml=junit.xml", "--llmsim-results=r.json", base_url=url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmsim: *endpoint=http://***@127.0.0.1:*/v1*"])
    stopped = sim.server.base_url
    sim.server.stop()  # errors name the endpoint too
    sim.write_scenarios("s.json", [scenario("b")])
    failed = sim.run("-o", "llmsim_max_retries=0", base_url=stopped.replace("http://", f"http://token:{secret}@"))
    failed.stdout.fnmatch_lines(["*cannot connect to http://***@127.0.0.1:*"])
    assert secret not in result.stdout.str() + failed.stdout.str()
    for path in sim.path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"URL credentials leaked into {path}"


def test_end_marker_is_stripped_and_agent_end_recorded(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*1. Customer: Hi, I would like chicken fillet.",
        f"*6. Agent: {AGENT_REPLIES[2].replace(' [END_CALL]', '')}",
        "*call ended by agent*",
    ])


def test_max_turns_ends_the_call(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", max_turns=3)])
    result = sim.run("-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*3. Customer: Two packs*", "*call ended by max_turns: reached max_turns=3*"])


def test_scripted_turns_replace_the_client_llm(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", turns=["Scripted hello", "Scripted bye [END_CALL]"])])
    result = sim.run("-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1. Customer: Scripted hello", "*3. Customer: Scripted bye",
                                 "*call ended by client*"])
    prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()]
    assert not any(p.startswith("CLIENT") for p in prompts)


def test_agent_can_speak_first(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", first_speaker="agent", max_turns=2)])
    result = sim.run("-rP")
    result.stdout.fnmatch_lines(["*1. Agent: Hello, Meat Market*", "*2. Customer: Hi, I would like*"])


def test_conversation_timeout_ends_and_is_judged(sim: SimProject) -> None:
    slow_client = {"match": {"system_contains": "CLIENT"}, "delay": 3.0, "reply": "slow"}
    base = default_script()["rules"]
    sim.server.set_script({"rules": [*base[:3], slow_client, *base[3:]]})
    # The agent opens (a conversation without an agent turn is an error, not a verdict); the customer is slow.
    sim.write_scenarios("s.json", [scenario("a", timeout=0.5, first_speaker="agent")])
    result = sim.run("-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*call ended by timeout: conversation exceeded timeout=0.5s*"])


def test_variables_are_data_not_templates(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", variables={"LOCATIONS": "{{ 7*7 }} and {% raw %}"})])
    sim.run().assert_outcomes(passed=1)
    agent_prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()
                     if r["body"]["messages"][0]["content"].startswith("AGENT")]
    assert agent_prompts and "Cities: {{ 7*7 }} and {% raw %}." in agent_prompts[0]


def test_scenario_seed_is_sent_and_default_seed_otherwise(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("seeded", variables={"SEED": 777}), scenario("unseeded")])
    sim.run("--llmsim-seed=99").assert_outcomes(passed=2)
    seeds = {}
    for r in sim.server.requests_log():
        name = r["body"]["messages"][0]["content"].split(" for ")[1].split(".")[0].split(" ")[0]
        seeds.setdefault(name, set()).add(r["body"].get("seed"))
    assert seeds == {"seeded": {777}, "unseeded": {99}}


def test_role_overrides_reach_the_request(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", agent={"model": "agent-x", "temperature": 0.1, "max_tokens": 42})])
    sim.run("--llmsim-model=base-model").assert_outcomes(passed=1)
    agent = [r["body"] for r in sim.server.requests_log() if r["body"]["messages"][0]["content"].startswith("AGENT")]
    client = [r["body"] for r in sim.server.requests_log() if r["body"]["messages"][0]["content"].startswith("CLIENT")]
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in agent} == {("agent-x", 0.1, 42)}
    assert {b["model"] for b in client} == {"base-model"}


def test_a_passed_conversation_is_kept_once_and_printed_only_when_passes_are(sim: SimProject) -> None:
    """pytest keeps every report to the end of the run. A passed item carries no transcript section unless pytest
    prints passes' output (-rP), and once the report plugin has its record the report keeps only the verdict's
    scalar fields: 10 000 scenarios would otherwise hold each conversation two more times."""
    sim.write_scenarios("s.json", [scenario("fine"), scenario("low_service")])
    reprec = sim.pytester.inline_run("-p", "no:randomly", f"--llmsim-base-url={sim.server.base_url}")
    reprec.assertoutcome(passed=1, failed=1)
    calls = {r.nodeid.rpartition("::")[2]: r for r in reprec.getreports("pytest_runtest_logreport")
             if r.when == "call"}
    assert [name for name, _ in calls["fine"].sections] == []
    assert [name for name, _ in calls["low_service"].sections] == ["Captured llmsim transcript call"]
    for report in calls.values():
        assert report.llmsim["score"] in (1, 3) and report.llmsim["status"] in ("passed", "failed")
        assert "transcript" not in report.llmsim and "usage" not in report.llmsim
    shown = sim.run("-rP")
    shown.assert_outcomes(passed=1, failed=1)
    assert shown.stdout.str().count("Captured llmsim transcript call") == 2
