"""Readable recordings: one YAML file per scenario, replayed before the cache, reviewed in pull requests."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_REPLIES, SimProject, scenario, verdict, write_bot
from pytest_llmsim.errors import CacheError
from pytest_llmsim.replay.recordings import load_recording, parse_recording, recording_path

REC = Path("recordings/scenarios/s.json")


def _files(sim: SimProject, root: str = "recordings") -> dict[str, bytes]:
    base = sim.path / root
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*.json")) if p.is_file()}


def test_each_scenario_gets_one_readable_file_with_transcript_verdict_and_calls(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["llmsim recordings in recordings: 2 written"])
    assert sorted(_files(sim)) == ["scenarios/s.json/a.json", "scenarios/s.json/low_b.json"]
    text = (sim.path / REC / "a.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert list(data) == ["llmsim_recording", "nodeid", "scenario", "endpoint", "roles", "verdict", "metrics",
                          "ended_by", "end_reason", "transcript", "prompts", "calls"]
    assert data["metrics"] == [{"name": "judge", "score": 3, "passed": True, "reason": "Polite and complete.",
                                "details": {"min_score": 2, "attempts": 1, "judge_method": "verdict"}}]
    assert data["nodeid"] == "scenarios/s.json::a"
    assert data["verdict"] == {"status": "passed", "score": 3, "min_score": 2, "comment": "Polite and complete."}
    assert [t["role"] for t in data["transcript"]] == ["client", "agent"] * 3
    assert data["transcript"][1]["text"] == "Hello, Meat Market, how can I help?"
    assert [c["role"] for c in data["calls"]] == ["client", "agent"] * 3 + ["evaluator"]
    first = data["calls"][0]
    assert first["call"] == "client turn 1" and first["model"] and first["usage"]["prompt_tokens"] >= 0
    assert set(data["prompts"]) == {"client", "agent", "evaluator"}
    assert data["prompts"]["agent"].startswith("AGENT for a.")
    for volatile in ("latency", "cached", "duration", "generated_at", "timestamp"):
        assert volatile not in text
    assert '    {"role": "agent", "text": "Hello, Meat Market, how can I help?"},\n' in text  # a turn per line


@pytest.mark.slow
def test_re_recording_an_unchanged_suite_changes_no_byte(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("mid_b"), scenario("low_c")])
    sim.run().assert_outcomes(passed=2, failed=1)
    before = _files(sim)
    shutil.rmtree(sim.path / ".llmsim_cache")
    requests = sim.server.stats()["requests"]
    rerun = sim.run("--llmsim-record=all")  # every call made again, every file rewritten
    rerun.assert_outcomes(passed=2, failed=1)
    assert sim.server.stats()["requests"] > requests
    rerun.stdout.fnmatch_lines(["llmsim recordings in recordings: 3 unchanged"])
    assert _files(sim) == before


@pytest.mark.slow
def test_a_changed_prompt_gives_a_readable_turn_by_turn_diff(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.run().assert_outcomes(passed=2)
    before = (sim.path / REC / "a.json").read_text(encoding="utf-8")
    untouched = (sim.path / REC / "b.json").read_bytes()
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(1, "Forgot the delivery date.")},
        {"match": {"system_contains": "AGENT v2"}, "replies": ["Hi, what do you need?", "Sure. [END_CALL]"]},
        {"match": {"system_contains": "CLIENT"}, "replies": ["Hi, I would like chicken fillet.", "Thanks."]},
    ]})
    (sim.path / "prompts" / "agent.j2").write_text("AGENT v2 for {{ scenario_name }}. {{ end_marker }}")
    sim.run("scenarios/s.json::a").assert_outcomes(failed=1)
    after = (sim.path / REC / "a.json").read_text(encoding="utf-8")
    diff = "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))
    assert '-    "agent": "AGENT for a. Cities: Moscow, Kazan. End with [END_CALL].",' in diff
    assert '+    "agent": "AGENT v2 for a. [END_CALL]",' in diff
    assert '-    {"role": "agent", "text": "Hello, Meat Market, how can I help?"},' in diff
    assert '+    {"role": "agent", "text": "Hi, what do you need?"},' in diff
    assert '+    "score": 1,' in diff and '-  "verdict": {"status": "passed", "score": 3,' in diff
    assert '+    "comment": "Forgot the delivery date."' in diff
    assert (sim.path / REC / "b.json").read_bytes() == untouched  # one file per scenario: b's is not touched


def test_replay_needs_no_endpoint_no_key_and_no_cache(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    sim.run().assert_outcomes(passed=1, failed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    requests = sim.server.stats()["requests"]
    # No base URL and no API key: the local model would serve the run, with its own defaults (model, max
    # tokens); a replay-only run takes the recorded ones instead and never starts a model.
    replay = sim.run("--llmsim-record=none", "-rA", base_url="")
    replay.assert_outcomes(passed=1, failed=1)
    assert sim.server.stats()["requests"] == requests
    assert "loading local model" not in replay.stdout.str()
    replay.stdout.fnmatch_lines(["llmsim recordings in recordings: 2 replayed"])


@pytest.mark.slow
def test_replay_with_the_server_gone(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.server.stop()
    sim.run("--llmsim-record=none", base_url="http://127.0.0.1:9/v1").assert_outcomes(passed=1)


def test_match_endpoint_makes_the_endpoint_part_of_the_match(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.write_ini(llmsim_match_endpoint="true")
    other = sim.server.base_url.replace("127.0.0.1", "localhost")
    result = sim.run("--llmsim-record=none", base_url=other)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no recorded reply*record mode is 'none'*"])


@pytest.mark.slow
def test_record_mode_new_records_only_missing_scenarios_and_never_changes_one(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    recorded = (sim.path / REC / "a.json").read_bytes()
    (sim.path / "prompts" / "agent.j2").write_text("AGENT v2 for {{ scenario_name }}. {{ end_marker }}")
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run("--llmsim-record=new", "-rA")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*s.json::a*the recording *a.json has no reply for this call (the agent prompt changed)*record mode 'new'"
        " never changes an existing recording*--llmsim-record=once*"])
    assert (sim.path / REC / "a.json").read_bytes() == recorded
    assert (sim.path / REC / "b.json").is_file()
    # once rewrites what changed
    sim.run("--llmsim-record=once").assert_outcomes(passed=2)
    assert (sim.path / REC / "a.json").read_bytes() != recorded


def test_none_mode_names_where_the_conversation_left_the_recording(sim: SimProject) -> None:
    bot = sim.path / "bot"
    write_bot(sim, module="bot", source=(
        "from pathlib import Path\n\n"
        "def reply(messages, context):\n"
        "    turn = sum(1 for m in messages if m['role'] == 'assistant') + 1\n"
        "    text = Path(__file__).with_name('greeting.txt').read_text() if turn == 1 else 'Anything else?'\n"
        "    return {'content': text, 'end': turn == 2}\n"))
    (bot / "greeting.txt").write_text("Hello, Meat Market!")
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bot.shop:reply"})])
    sim.run().assert_outcomes(passed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    (bot / "greeting.txt").write_text("Hello, Fish Market!")  # the agent under test changed
    result = sim.run("--llmsim-record=none")
    result.assert_outcomes(errors=1)
    # worded as the cache path words it (tests/test_agents.py): the turn, then the recorded and the new agent text
    result.stdout.fnmatch_lines(["*the conversation diverged from the recording at turn 2: the agent's reply changed*",
                                 "*  recorded agent text: 'Hello, Meat Market!'",
                                 "*  new agent text:      'Hello, Fish Market!'",
                                 f"The recording *{REC / 'a.json'} has no reply for this request*"])
    assert "No recorded reply" not in result.stdout.str()  # the cache's own explanation adds nothing here


@pytest.mark.slow
def test_unused_recordings_are_listed_and_pruned(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.write_scenarios("gone.json", [scenario("c")])
    sim.run().assert_outcomes(passed=3)
    (sim.path / "scenarios" / "gone.json").unlink()
    sim.write_scenarios("s.json", [scenario("a"), scenario("b2")])
    result = sim.run("-k", "not b2")  # deselected scenarios' recordings are not unused
    result.stdout.fnmatch_lines(["llmsim: 2 recording(s) unused by any collected scenario (--llmsim-prune deletes "
                                 "them):", "  recordings/scenarios/gone.json/c.json",
                                 "  recordings/scenarios/s.json/b.json"])
    assert (sim.path / REC / "b.json").exists()
    pruned = sim.run("-k", "not b2", "--llmsim-prune")
    pruned.stdout.fnmatch_lines(["llmsim: pruned 2 unused recording(s) from recordings"])
    assert sorted(_files(sim)) == ["scenarios/s.json/a.json"]  # b2 never ran (deselected)
    assert not (sim.path / "recordings" / "scenarios" / "gone.json").exists()


def test_a_file_that_does_not_parse_keeps_its_recordings(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    (sim.path / "scenarios" / "s.json").write_text("[{broken", encoding="utf-8")
    result = sim.run("--llmsim-prune")
    assert "unused" not in result.stdout.str() and "pruned" not in result.stdout.str()
    assert (sim.path / REC / "a.json").exists()


@pytest.mark.slow
def test_unused_recordings_under_xdist(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.run().assert_outcomes(passed=2)
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-n", "2", "--llmsim-prune")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmsim: pruned 1 unused recording(s) from recordings"])
    assert sorted(_files(sim)) == ["scenarios/s.json/a.json"]


@pytest.mark.slow
def test_xdist_writes_the_same_recordings_as_one_process(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(6)] + [scenario("low_x")])
    sim.run("--llmsim-recordings=one").assert_outcomes(passed=6, failed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.run("-n", "2", "--llmsim-recordings=two").assert_outcomes(passed=6, failed=1)
    assert _files(sim, "one") == _files(sim, "two") and len(_files(sim, "one")) == 7


def test_recordings_off_keeps_only_the_cache(sim: SimProject) -> None:
    sim.write_ini(llmsim_recordings="off")
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    assert not (sim.path / "recordings").exists()
    assert (sim.path / ".llmsim_cache").is_dir()


@pytest.mark.slow
def test_two_branches_recording_different_scenarios_merge_without_conflict(sim: SimProject) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")

    def run_git(*args: str) -> str:
        return subprocess.run([git, *args], cwd=sim.path, check=True, capture_output=True, text=True,
                              env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                   "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(sim.path),
                                   "PATH": "/usr/bin:/bin"}).stdout

    sim.write_scenarios("base.json", [scenario("base")])
    sim.run().assert_outcomes(passed=1)
    (sim.path / ".gitignore").write_text(".llmsim_cache/\n__pycache__/\n")
    run_git("init", "-q", "-b", "main")
    run_git("add", "-A")
    run_git("commit", "-q", "-m", "base")
    run_git("checkout", "-q", "-b", "one")
    sim.write_scenarios("one.json", [scenario("one")])
    sim.run().assert_outcomes(passed=2)
    run_git("add", "-A")
    run_git("commit", "-q", "-m", "one")
    run_git("checkout", "-q", "main")
    run_git("checkout", "-q", "-b", "two")
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.write_scenarios("two.json", [scenario("two")])
    sim.run().assert_outcomes(passed=2)
    run_git("add", "-A")
    run_git("commit", "-q", "-m", "two")
    run_git("merge", "-q", "--no-edit", "one")  # raises on a conflict
    assert sorted(_files(sim)) == ["scenarios/base.json/base.json", "scenarios/one.json/one.json",
                                   "scenarios/two.json/two.json"]
    result = sim.run("--llmsim-record=none")
    result.assert_outcomes(passed=3)


# -- untrusted files ---------------------------------------------------------------------------------------------
def _recorded(sim: SimProject) -> Path:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    return sim.path / REC / "a.json"


@pytest.mark.slow
def test_a_crafted_recording_is_rejected_and_nothing_in_it_runs(sim: SimProject) -> None:
    path = _recorded(sim)
    marker = sim.path / "pwned"
    path.write_text(f"llmsim_recording: 1\nnodeid: !!python/object/apply:os.system ['touch {marker}']\n")
    result = sim.run("--llmsim-record=none")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*llmsim recording {path} is not valid JSON (line 1, column 1: Expecting value);"
                                 " delete it and re-record with --llmsim-record=once*"])
    assert not marker.exists()


VALID = {"llmsim_recording": 1, "nodeid": "s.json::a", "scenario": "a", "verdict": {"status": "passed"}}
CALL = {"key": "0" * 64, "role": "client", "model": "m", "reply": "r", "usage": {"prompt_tokens": 1,
                                                                               "completion_tokens": 1}}


@pytest.mark.parametrize(("text", "problem"), [
    ('["not", "a", "mapping"]', "is not a mapping"),
    ('{"llmsim_recording": 99}', "has format 99"),
    (json.dumps({**VALID, "verdict": {"status": "passed", "score": "3"}}), "verdict.score is not an integer"),
    (json.dumps({**VALID, "verdict": {"status": "great"}}), "verdict.status 'great' is not one of"),
    (json.dumps({**VALID, "calls": [{**CALL, "key": "abc"}]}), "calls[0].key is not a SHA-256"),
    (json.dumps({**VALID, "calls": [{**CALL, "usage": {"prompt_tokens": True, "completion_tokens": 1}}]}),
     "calls[0].usage.prompt_tokens is not an integer"),
    (json.dumps({**VALID, "transcript": [{"role": "judge", "text": "x"}]}), "transcript[0].role is not client"),
    ('{"llmsim_recording": 1, "nodeid": NaN}', "holds NaN"),
    ("[" * 100_000 + "]" * 100_000, "too deep"),
    (json.dumps({**VALID, "calls": [{**CALL, "end": 1}]}), "calls[0].end is not true or false"),
    ("\xff\xfe", "is not UTF-8"),
    (json.dumps({**VALID, "verdict": {"status": "passed", "score": 99}}), "verdict.score is 99, not a score from 1"),
    (json.dumps({**VALID, "verdict": {"status": "passed", "score": 3, "min_score": 0}}),
     "verdict.min_score is 0, not a score from 1 to 3"),
    (json.dumps({**VALID, "calls": [{**CALL, "usage": {"prompt_tokens": -5, "completion_tokens": 1}}]}),
     "calls[0].usage.prompt_tokens is -5, not a non-negative integer"),
    (json.dumps({**VALID, "calls": [{**CALL, "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                        "cached_input_tokens": -1}}]}),
     "calls[0].usage.cached_input_tokens is -1, not a non-negative integer"),
    (json.dumps({**VALID, "verdict": {"status": "passed", "score": 1, "min_score": 2}}),
     "field 'verdict.status' says passed but score 1 against minimum 2, which is failed"),
    (json.dumps({**VALID, "verdict": {"status": "failed", "score": 3, "min_score": 2},
                 "metrics": [{"name": "judge", "score": 3, "passed": True}]}),
     "field 'verdict.status' says failed but every metric passed, which is passed"),
    (json.dumps({**VALID, "verdict": {"status": "passed", "score": 3, "min_score": 2},
                 "metrics": [{"name": "judge", "score": 1, "passed": False}]}),
     "field 'verdict.score' says 3 but metrics[0] (judge) scores 1"),
])
def test_bad_recordings_are_one_line_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "r.json"
    with pytest.raises(CacheError) as info:
        parse_recording(text.encode("latin-1") if text.startswith("\xff") else text.encode(), path)
    message = str(info.value)
    assert problem in message and str(path) in message and "re-record" in message, message
    assert "\n" not in message


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def _evaluator_reply(data: dict[str, Any]) -> None:
    (call,) = [c for c in data["calls"] if c["role"] == "evaluator"]
    call["reply"] = verdict(3, "The agent was rude.")


def _verdict_and_metrics(data: dict[str, Any]) -> None:
    data["verdict"].update(status="passed", score=3)
    data["metrics"][0].update(score=3, passed=True)


def _transcript(data: dict[str, Any]) -> None:
    data["transcript"][1]["text"] = "Hello, Fish Market, how can I help?"


@pytest.mark.slow
@pytest.mark.parametrize(("change", "field", "says"), [
    (_evaluator_reply, "verdict.score", "says 1 but the recorded evaluator reply scores 3"),
    (lambda data: data["verdict"].update(status="passed", score=3), "verdict.score",
     "says 3 but metrics[[]0] (judge) scores 1"),
    (_verdict_and_metrics, "verdict.score", "says 3 but the recorded evaluator reply scores 1"),
    (lambda data: data["verdict"].update(comment="Perfect."), "verdict.comment",
     "says 'Perfect.' but the recorded evaluator reply says 'The agent was rude.'"),
    (_transcript, "transcript[[]1].text",
     "says 'Hello, Fish Market, how can I help?' but the recorded agent reply gives 'Hello, Meat Market, how can*"),
], ids=["evaluator-reply", "verdict", "verdict-and-metrics", "comment", "transcript"])
@pytest.mark.parametrize("mode", ["none", "new"])
def test_a_hand_edited_recording_is_an_error_naming_the_file_and_the_field(
        sim: SimProject, change: Any, field: str, says: str, mode: str) -> None:
    """What a reviewer reads (verdict, transcript) must be what the replayed calls give: a recording edited in
    one place but not the others never decides CI (issue 24.2)."""
    sim.write_scenarios("s.json", [scenario("low_a"), scenario("b")])
    sim.run().assert_outcomes(passed=1, failed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    path = sim.path / REC / "low_a.json"
    _edit(path, change)
    edited = path.read_bytes()
    result = sim.run(f"--llmsim-record={mode}", "-rA")
    result.assert_outcomes(passed=1, errors=1)  # b, untouched, still replays
    result.stdout.fnmatch_lines([f"*llmsim recording {path}: field '{field}' {says}; restore the file from version "
                                 "control, or re-record it with --llmsim-record=all*",
                                 "scenarios/s.json::low_a * ERROR (recording_error)"])
    assert path.read_bytes() == edited  # never rewritten by a mode that trusts the file


@pytest.mark.slow
def test_an_unedited_recording_replays_and_once_rewrites_a_hand_edit_from_its_calls(sim: SimProject) -> None:
    """``once`` re-records: a pure replay rewrites the file from its calls, so the edit shows in the diff."""
    sim.write_scenarios("s.json", [scenario("low_a")])
    sim.run().assert_outcomes(failed=1)
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.run("--llmsim-record=none").assert_outcomes(failed=1)  # consistent: no error
    path = sim.path / REC / "low_a.json"
    _edit(path, _transcript)
    sim.run("--llmsim-record=once").assert_outcomes(failed=1)
    assert json.loads(path.read_text(encoding="utf-8"))["transcript"][1]["text"] == AGENT_REPLIES[0]


def test_a_recording_larger_than_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with path.open("wb") as fh:
        fh.truncate(33 * 2**20)
    with pytest.raises(CacheError, match="larger than the 32 MiB"):
        load_recording(path)


def test_recording_paths_are_safe_and_distinct(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    assert recording_path(root, "scenarios/s.json::a") == root / "scenarios" / "s.json" / "a.json"
    odd = recording_path(root, "../x/s.yaml::we/ird::na me")
    assert root in odd.parents and ".." not in odd.parts
    assert recording_path(root, "s.json::a b") != recording_path(root, "s.json::a_b")
    assert recording_path(root, "s.json::a", trial=2).name == "a.trial-2.json"
    russian = recording_path(root, "s.json::заказ_курицы")
    assert russian.name == "заказ_курицы.json"


@pytest.mark.slow
def test_a_timed_out_conversation_replays_to_the_same_turn_from_its_recording(sim: SimProject) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "Polite and complete.")},
        {"match": {"system_contains": "AGENT"}, "reply": "Still here."},
        {"match": {"system_contains": "CLIENT"}, "reply": "Go on.", "delay": 0.4},
    ]})
    sim.write_scenarios("s.json", [scenario("slow", timeout=1.5, max_turns=30)])
    sim.run().assert_outcomes(passed=1)
    data = json.loads((sim.path / REC / "slow.json").read_text(encoding="utf-8"))
    assert data["ended_by"] == "timeout" and data["timeout"]["turns"] == len(data["transcript"])
    shutil.rmtree(sim.path / ".llmsim_cache")
    requests = sim.server.stats()["requests"]
    sim.run("--llmsim-record=none").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests


@pytest.mark.slow
def test_naming_one_scenario_on_the_command_line_leaves_the_others_recordings_alone(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.run().assert_outcomes(passed=2)
    result = sim.run("scenarios/s.json::a", "--llmsim-prune")
    result.assert_outcomes(passed=1)
    assert "unused" not in result.stdout.str() and "pruned" not in result.stdout.str()
    assert (sim.path / REC / "b.json").exists()


@pytest.mark.slow
def test_secrets_never_reach_a_recording(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-4711")
    sim.write_scenarios("s.json", [scenario("a", variables={"PERSONALITY": "reads out sk-test-very-secret-4711"})])
    sim.run().assert_outcomes(passed=1)
    text = (sim.path / REC / "a.json").read_text(encoding="utf-8")
    assert "CLIENT for a. Persona: reads out" in text
    assert "sk-test-very-secret-4711" not in text


@pytest.mark.slow
def test_a_cached_code_agent_replays_from_the_recording_without_being_called(sim: SimProject) -> None:
    bot = sim.path / "cbot"
    write_bot(sim, module="cbot", source=(
        "from pathlib import Path\n\n"
        "def reply(messages, context):\n"
        "    calls = Path(__file__).with_name('calls.txt')\n"
        "    calls.write_text(calls.read_text() + 'x' if calls.exists() else 'x')\n"
        "    turn = sum(1 for m in messages if m['role'] == 'assistant') + 1\n"
        "    return {'content': f'Agent turn {turn}', 'end': turn == 2}\n"))
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "cbot.shop:reply"}, agent_cache=True)])
    sim.run().assert_outcomes(passed=1)
    assert (bot / "calls.txt").read_text() == "xx"
    data = json.loads((sim.path / REC / "a.json").read_text(encoding="utf-8"))
    assert [c["role"] for c in data["calls"]] == ["client", "agent", "client", "agent", "evaluator"]
    assert set(data["roles"]) == {"client", "evaluator"}  # the agent is code: no agent model
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.run("--llmsim-record=none").assert_outcomes(passed=1)
    assert (bot / "calls.txt").read_text() == "xx"  # replayed, not called


@pytest.mark.slow
def test_a_recordings_folder_that_cannot_be_written_is_reported_and_the_verdicts_stand(sim: SimProject) -> None:
    """The recordings path is a file (or a read-only mount): each item keeps its verdict, the summary says how many
    recordings were not written and why, and the run's exit status is the verdicts'."""
    (sim.path / "recordings").write_text("a file, not a directory")
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["llmsim: 2 recording(s) not written: *"])
    rows = json.loads((sim.path / "out.json").read_text())["results"]
    assert [row["status"] for row in rows] == ["passed", "failed"]
    assert (sim.path / "recordings").read_text() == "a file, not a directory"
