"""Seeded disk cache and record modes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SimProject, scenario
from pytest_llmsim.replay.cache import request_key


def _junit_scores(sim: SimProject) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    root = ET.parse(sim.path / "junit.xml").getroot()
    return {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}["score"]
            for tc in root.iter("testcase")}


def test_second_run_replays_with_zero_network_calls(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b"), scenario("mid_c")])
    sim.run("-rP", "--junitxml=junit.xml", "-o", "junit_family=xunit1").assert_outcomes(passed=2, failed=1)
    first = sim.server.stats()["requests"]
    first_out = _junit_scores(sim)
    assert first > 0
    sim.run("-rP", "--junitxml=junit.xml", "-o", "junit_family=xunit1").assert_outcomes(passed=2, failed=1)
    assert sim.server.stats()["requests"] == first
    assert _junit_scores(sim) == first_out


def test_replay_only_mode_works_after_the_server_is_gone(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    first = sim.run("-rA")
    first.assert_outcomes(passed=1, failed=1)
    transcript = [line for line in first.stdout.lines if "Customer:" in line or "Agent:" in line]
    url = sim.server.base_url
    sim.server.stop()
    second = sim.run("-rA", "--llmsim-record=none", base_url=url)
    second.assert_outcomes(passed=1, failed=1)
    assert [line for line in second.stdout.lines if "Customer:" in line or "Agent:" in line] == transcript


def test_replay_only_miss_names_scenario_turn_and_difference(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", variables={"SEED": 1})])
    sim.run().assert_outcomes(passed=1)
    recorded = sim.server.stats()["requests"]
    sim.write_scenarios("s.json", [scenario("a", variables={"SEED": 2})])
    result = sim.run("--llmsim-record=none")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*s.json::a client turn 1: no recorded reply in *.llmsim_cache and record mode is 'none'.",
        "*Closest recorded call (scenarios/s.json::a client turn 1) differs in: seed: wanted 2, recorded 1*",
        "*Record it with --llmsim-record=once*",
    ])
    assert sim.server.stats()["requests"] == recorded  # replay-only mode made no call


def test_record_all_calls_everything_again(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    first = sim.server.stats()["requests"]
    sim.run("--llmsim-record=all").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == 2 * first


def test_changed_prompt_template_misses_the_cache(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    first = sim.server.stats()["requests"]
    (sim.path / "prompts" / "agent.j2").write_text("AGENT v2 for {{ scenario_name }} {{ LOCATIONS }}")
    sim.run().assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] > first


def test_cache_dir_option(sim: SimProject, tmp_path: Path) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run(f"--llmsim-cache-dir={tmp_path / 'elsewhere'}").assert_outcomes(passed=1)
    assert (tmp_path / "elsewhere" / "cache.db").exists()
    assert not (sim.path / ".llmsim_cache").exists()


def test_key_covers_what_decides_the_reply_and_never_the_credentials() -> None:
    base = {"endpoint": "http://x/v1", "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.0, "seed": 1, "max_tokens": 10, "response_format": None, "tools": None, "attempt": 0}
    key = request_key(base)
    for field, value in [("endpoint", "http://y/v1"), ("model", "n"), ("temperature", 0.5), ("seed", 2),
                         ("max_tokens", 11), ("response_format", {"json_schema": {}}), ("tools", []),
                         ("attempt", 1), ("messages", [{"role": "user", "content": "hello"}])]:
        assert request_key({**base, field: value}) != key, field
    assert request_key({**base, "api_key": "sk-1"}) == request_key({**base, "api_key": "sk-2"}) == key


def test_two_processes_share_one_cache_safely(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pytest_llmsim.replay.cache import CallCache
        from pytest_llmsim.model.settings import RecordMode
        cache = CallCache(Path(sys.argv[1]), RecordMode.ONCE)
        for i in range(300):
            key = f"k{i}"
            if cache.lookup(key) is None:
                reply = {"text": f"v{i}", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1,
                         "model": sys.argv[2]}
                cache.store(key, {"i": i}, reply, "label")
        cache.close()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(n)]) for n in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    from pytest_llmsim.model.settings import RecordMode
    from pytest_llmsim.replay.cache import CallCache

    cache = CallCache(tmp_path, RecordMode.NONE)
    assert len(cache) == 300
    assert all(cache.lookup(f"k{i}")["text"] == f"v{i}" for i in range(300))
    json.dumps(cache.lookup("k0"))  # values stay plain data
    cache.close()


@pytest.mark.slow
def test_a_full_replay_never_imports_the_http_client(sim: SimProject) -> None:
    """openai costs about a second to import; a run served entirely from the cache must not pay for it."""
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    sim.run().assert_outcomes(passed=1, failed=1)
    sim.pytester.makeconftest("""
        import sys

        def pytest_unconfigure(config):
            with open("imported.txt", "w") as fh:
                fh.write(str("openai" in sys.modules))
    """)
    sim.run("--llmsim-record=none", subprocess=True).assert_outcomes(passed=1, failed=1)
    assert (sim.path / "imported.txt").read_text() == "False"
    sim.run("--llmsim-record=all", subprocess=True).assert_outcomes(passed=1, failed=1)
    assert (sim.path / "imported.txt").read_text() == "True"
