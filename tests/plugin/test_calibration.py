"""Judge calibration (--llmsim-calibrate): the suite's judge scores conversations a person scored, before the
scenarios; accuracy, confusion, mean absolute error, disagreements, the judge gate and the export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.engine.calibration import CalibrationError, load_case

REPO = Path(__file__).resolve().parent.parent.parent


def case(name: str, human: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "human_score": human, "note": f"a person gave it {human}",
            "variables": {"LOCATIONS": "Moscow, Kazan", "PERSONALITY": "calm"},
            "transcript": [{"role": "client", "text": "Hi, two chicken fillets to Moscow please."},
                           {"role": "agent", "text": "Two fillets to Moscow, delivery in 1-2 days. Goodbye!"}],
            "ended_by": "agent", **fields}


def write_set(sim: SimProject, cases: list[dict[str, Any]], folder: str = "calibration") -> Path:
    directory = sim.path / folder
    directory.mkdir(exist_ok=True)
    for data in cases:
        (directory / f"{data['name']}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return directory


# The scripted judge: 1 for low_*, 2 for mid_*, 3 otherwise, and no verdict at all for junk_*.
SEVEN = [case("low_a", 1), case("low_b", 2), case("mid_c", 2), case("mid_d", 3), case("good_e", 3),
         case("good_f", 1), case("junk_g", 2)]


def script_with_junk() -> dict[str, Any]:
    return {"rules": [{"match": {"system_contains": "EVALUATOR for junk_"}, "reply": "I cannot decide."},
                      *default_script()["rules"]]}


def judge_requests(sim: SimProject, names: list[str]) -> int:
    """Evaluator requests the scripted server received for the calibration cases ``names``."""
    count = 0
    for entry in sim.server.requests_log():
        system = "\n".join(str(m.get("content")) for m in entry["body"]["messages"] if m.get("role") == "system")
        count += any(f"EVALUATOR for {name} " in system for name in names)
    return count


@pytest.mark.slow
def test_accuracy_confusion_mae_and_disagreements_are_exact(sim: SimProject) -> None:
    sim.server.set_script(script_with_junk())
    write_set(sim, SEVEN)
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-calibrate=calibration", "--llmsim-results=out.json")
    result.assert_outcomes(passed=1)
    assert result.ret == 0  # no gate: the figures inform
    result.stdout.fnmatch_lines([
        "*llmsim: the judge scores the calibration set calibration (7 conversations) before the scenarios ...",
        "*= llmsim judge calibration =*",
        "set: calibration (7 conversations); judge calls: 9 live, 0 replayed;*",
        "judge accuracy 42.9% (95% CI 15.8%-75.0%, Wilson): 3 of 7 calibration conversations match the human "
        "score, 1 judge error",
        "false passes: 1 of 2 conversations a person scored below min_score 2 were scored 2 or more by the judge "
        "(50.0%)",
        "mean absolute error: 0.6667 over 6 scored",
        "confusion (rows: human score, columns: judge score):",
        "  human \\ judge      1      2      3  error",
        "              1      1      0      1      0",
        "              2      1      1      0      1",
        "              3      0      1      1      0",
        "disagreements:",
        "  calibration/good_f.json: human 1, judge 3 - Polite and complete.",
        "  calibration/junk_g.json: human 2, judge ERROR (invalid_verdict): calibration calibration/junk_g.json: "
        "the evaluator's reply is not a valid verdict after 3 attempt(s)*",
        "  calibration/low_b.json: human 2, judge 1 - The agent was rude.",
        "  calibration/mid_d.json: human 3, judge 2 - Slow but correct.",
        "*= llmsim summary =*",
    ])
    # An unparsable verdict is retried (judge_attempts), then an error entry: never a guessed score.
    assert judge_requests(sim, ["junk_g"]) == 3
    data = json.loads((sim.path / "out.json").read_text())["calibration"]
    assert (data["total"], data["matches"], data["errors"], data["accuracy"], data["mean_absolute_error"]) == \
        (7, 3, 1, 0.4286, 0.6667)
    assert (data["accuracy_95ci"], data["min_score"], data["should_fail"], data["false_passes"],
            data["false_pass_rate"]) == ([0.1582, 0.7495], 2, 2, 1, 0.5)
    assert data["confusion"] == {"1": {"1": 1, "2": 0, "3": 1, "error": 0},
                                 "2": {"1": 1, "2": 1, "3": 0, "error": 1},
                                 "3": {"1": 0, "2": 1, "3": 1, "error": 0}}
    assert [(d["file"], d["human"], d["judge"]) for d in data["disagreements"]] == [
        ("calibration/good_f.json", 1, 3), ("calibration/junk_g.json", 2, None),
        ("calibration/low_b.json", 2, 1), ("calibration/mid_d.json", 3, 2)]
    junk = next(c for c in data["cases"] if c["name"] == "junk_g")
    assert junk["judge_score"] is None and junk["error_kind"] == "invalid_verdict"
    assert junk["raw_verdict"] == "I cannot decide." and junk["match"] is False
    assert data["gate"] == {"min_accuracy": None, "checked": False, "missed": []}


@pytest.mark.slow
@pytest.mark.parametrize(("gate", "ret"), [("0.4", 0), ("42%", 0), ("0.5", 1), ("90%", 1)])
def test_the_judge_gate_fails_the_session_below_the_minimum(sim: SimProject, gate: str, ret: int) -> None:
    sim.server.set_script(script_with_junk())
    write_set(sim, SEVEN)
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-calibrate=calibration", f"--llmsim-min-judge-accuracy={gate}",
                     "--llmsim-results=out.json")
    result.assert_outcomes(passed=1)
    assert result.ret == ret
    missed = json.loads((sim.path / "out.json").read_text())["calibration"]["gate"]["missed"]
    if ret:
        minimum = float(gate.rstrip("%")) / (100 if gate.endswith("%") else 1)
        line = (f"judge accuracy 42.9% (3 of 7 calibration conversations match the human score, 1 judge error) is "
                f"below the minimum {minimum:.1%} (llmsim_min_judge_accuracy)")
        result.stdout.fnmatch_lines([f"llmsim gate missed: {line}"])
        assert missed == [line]
    else:
        result.stdout.fnmatch_lines(["llmsim: judge accuracy gate met (42.9% >= 4*"])
        assert missed == [] and "gate missed" not in result.stdout.str()


@pytest.mark.parametrize(("gate", "ret"), [(None, 0), ("0.4", 0), ("0.5", 1)])
def test_a_calibration_only_run_exits_by_its_gate_not_with_no_tests_ran(sim: SimProject, gate: str | None,
                                                                         ret: int) -> None:
    """`-k calibration_only --llmsim-calibrate DIR` runs no test: the calibration is the run, so the exit status
    is 0 when it ran (and met its gate, if any) and 1 when it missed the gate, never pytest's 5 (no tests ran)."""
    sim.server.set_script(script_with_junk())
    write_set(sim, SEVEN)
    sim.write_scenarios("s.json", [scenario("fine")])
    options = [f"--llmsim-min-judge-accuracy={gate}"] if gate else []
    result = sim.run("-k", "calibration_only", "--llmsim-calibrate=calibration", *options)
    result.assert_outcomes()
    assert result.ret == ret
    result.stdout.fnmatch_lines(["judge accuracy 42.9% (95% CI*"])
    assert sim.run("-k", "calibration_only").ret == pytest.ExitCode.NO_TESTS_COLLECTED  # without a calibration


def test_the_gate_from_the_ini_file_and_a_gate_without_a_set(sim: SimProject) -> None:
    write_set(sim, [case("low_a", 3)])
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.write_ini(llmsim_calibrate="calibration", llmsim_min_judge_accuracy="1.0")
    result = sim.run("--llmsim-results=out.ndjson")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["false passes: n/a (no conversation a person scored below min_score 2)",
                                 "llmsim gate missed: judge accuracy 0.0% (0 of 1 *"])
    summary = json.loads((sim.path / "out.summary.json").read_text())  # beside an NDJSON export: its summary file
    assert summary["calibration"]["accuracy"] == 0.0 and summary["calibration"]["gate"]["checked"] is True
    sim.write_ini(llmsim_calibrate="")
    result = sim.run()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["llmsim: judge gate (llmsim_min_judge_accuracy) not checked: no calibration set "
                                 "given (--llmsim-calibrate)"])


BROKEN = {
    "score_4": (lambda d: d.update(human_score=4), "field 'human_score': must be 1, 2 or 3 (got 4)"),
    "score_true": (lambda d: d.update(human_score=True), "field 'human_score': must be 1, 2 or 3 (got True)"),
    "no_score": (lambda d: d.pop("human_score"), "field 'human_score': missing; a calibration file needs the score"),
    "bad_role": (lambda d: d["transcript"][1].update(role="bot"),
                 "field 'transcript[1].role': must be \"client\" or \"agent\" (got 'bot')"),
    "silent_agent": (lambda d: d["transcript"][1].update(text="  "), "field 'transcript': no agent turn has text"),
    "bad_end": (lambda d: d.update(ended_by="hangup"), "field 'ended_by': must be one of client, agent, script"),
    "no_reason": (lambda d: d.update(ended_by="max_turns"), "field 'end_reason': missing"),
    "typo": (lambda d: d.update(humanscore=2), "field 'humanscore': unknown field"),
    "reserved": (lambda d: d["variables"].update(transcript="x"), "field 'variables': 'transcript' is set by llmsim"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_calibration_file_is_a_usage_error_naming_file_and_field(sim: SimProject, breakage: str) -> None:
    change, message = BROKEN[breakage]
    bad = case("bad", 2)
    change(bad)
    write_set(sim, [case("good", 3), bad])
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-calibrate=calibration")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: llmsim: {sim.path / 'calibration' / 'bad.json'}: "
                                                     f"{message}"), errors
    assert sim.server.stats()["requests"] == 0  # stopped before any call


def test_unreadable_files_and_sets_and_a_missing_template_variable(sim: SimProject) -> None:
    directory = write_set(sim, [case("good", 3)])
    (directory / "broken.json").write_text('{"human_score": 2,', encoding="utf-8")
    (directory / "more.json").write_text("[]", encoding="utf-8")
    result = sim.run("--llmsim-calibrate=calibration")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: llmsim: {directory / 'broken.json'}:1:19: invalid JSON: *; fix the syntax "
                                 "(and 1 more bad calibration file(s))"])
    result = sim.run("--llmsim-calibrate=nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nowhere: the calibration set does not exist*"])
    (sim.path / "empty").mkdir()
    (sim.path / "empty" / "README.md").write_text("scores\n")
    result = sim.run("--llmsim-calibrate=empty")
    result.stderr.fnmatch_lines(["*empty: the calibration set has no .json/.yaml/.yml files*"])
    # The judge's template needs a variable the file does not set: found before any call.
    (sim.path / "prompts" / "evaluator.j2").write_text("EVALUATOR for {{ scenario_name }} in {{ CITY }}.")
    result = sim.run("--llmsim-calibrate=calibration/good.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: llmsim: {directory / 'good.json'}: template 'evaluator.j2' uses undefined "
                                 "variable 'CITY'; set it in the calibration file's 'variables'"])
    assert sim.server.stats()["requests"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_it_runs_once_before_the_scenarios_and_a_rerun_replays(sim: SimProject, mode: list[str]) -> None:
    cases = [case("low_x", 1), case("mid_y", 2), case("good_z", 2)]
    write_set(sim, cases)
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(4)])
    result = sim.run(*mode, "--llmsim-calibrate=calibration", "--llmsim-record=all")  # all: no replays
    result.assert_outcomes(passed=4)
    assert judge_requests(sim, ["low_x", "mid_y", "good_z"]) == 3  # once, on the controller, not per worker
    first_scenario_call = min(entry["time"] for entry in sim.server.requests_log()
                              if "CLIENT for" in json.dumps(entry["body"]["messages"]))
    judge_calls = [entry["time"] for entry in sim.server.requests_log()
                   if "EVALUATOR for low_x" in json.dumps(entry["body"]["messages"])]
    assert max(judge_calls) < first_scenario_call  # before the scenarios
    out = result.stdout.str()
    assert out.count("llmsim judge calibration") == 1
    result.stdout.fnmatch_lines(["set: calibration (3 conversations); judge calls: 3 live, 0 replayed*",
                                 "judge accuracy 66.7% (95% CI *): 2 of 3 *"])
    sim.server.reset()
    result = sim.run(*mode, "--llmsim-calibrate=calibration", "--llmsim-record=none")
    result.assert_outcomes(passed=4)
    assert sim.server.stats()["requests"] == 0
    result.stdout.fnmatch_lines(["set: calibration (3 conversations); judge calls: 0 live, 3 replayed*",
                                 "judge accuracy 66.7% (95% CI *): 2 of 3 *"])


@pytest.mark.slow
def test_a_chat_file_with_a_human_score_replays_the_runs_own_verdict(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("mid_call")])
    sim.run("--llmsim-chats-dir=chats").assert_outcomes(passed=1)
    chat = sim.path / "chats" / "chat_mid_call_trial1.json"
    data = json.loads(chat.read_text(encoding="utf-8"))
    assert data["score"] == 2
    data["human_score"] = 3
    data["note"] = "I would have given it full marks"
    chat.write_text(json.dumps(data), encoding="utf-8")
    sim.server.reset()
    result = sim.run("--llmsim-calibrate=chats", "-k", "nothing")
    assert sim.server.stats()["requests"] == 0  # the same judge request as the run's: replayed from the cache
    result.stdout.fnmatch_lines(["*judge calls: 0 live, 1 replayed*",
                                 "  chats/chat_mid_call_trial1.json: human 3, judge 2 - Slow but correct."])
    del data["human_score"]
    chat.write_text(json.dumps(data), encoding="utf-8")
    result = sim.run("--llmsim-calibrate=chats")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*chat_mid_call_trial1.json: field 'human_score': missing; a chat file "
                                 "(--llmsim-chats-dir) needs the score a person gave the conversation*"])


def test_collect_only_judges_nothing(sim: SimProject) -> None:
    write_set(sim, [case("low_a", 1)])
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-calibrate=calibration", "--collect-only")
    assert result.ret == 0 and sim.server.stats()["requests"] == 0
    assert "llmsim judge calibration" not in result.stdout.str()


def test_a_case_file_names_its_problem_without_pytest(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({**case("x", 2), "variables": {"SEED": "7"}}))
    with pytest.raises(CalibrationError, match=re.escape("x.json: field 'variables': 'SEED' must be an integer")):
        load_case(path)
    path.write_text(json.dumps({**case("x", 2), "ended_by": "max_turns", "end_reason": "reached max_turns=8"}))
    loaded = load_case(path)
    assert (loaded.human_score, loaded.transcript.ended_by, loaded.transcript.end_reason) == \
        (2, "max_turns", "reached max_turns=8")
    assert loaded.transcript.as_text().splitlines()[1].startswith("  2. Agent: Two fillets")


# -- the bundled local judge says what its verdicts are worth (issue 25, part 3) ----------------------------------
BUNDLED_LINE = ("llmsim: the judge is the bundled local model SmolLM2-135M-Instruct.Q4_1.gguf, which agreed with the "
                "shipped calibration labels on 16 of 48 conversations (33.3%, measured 2026-12-07): its scores are "
                "not evidence; configure an endpoint for verdicts that mean something")
CAVEAT_LINE = ("llmsim: the score deltas since the baseline come from the local judge SmolLM2-135M-Instruct.Q4_1.gguf "
               "(33.3% calibration accuracy): they are not evidence of a change")


def _local_judge_recordings(sim: SimProject) -> None:
    """Recordings whose every call went to the local model's name (``local-gguf``): a run without an endpoint
    replays them (role settings adopted from the recordings), so its judge is the local model, without starting
    it. The scripted server stands in for the model when recording. The judge method is pinned: ``auto`` on the
    local model follows its server's engine (``logprobs`` on llama.cpp's), which recording against the scripted
    server has not, so the replay would ask other calls than those recorded."""
    sim.write_ini(llmsim_judge_method="score")
    sim.write_scenarios("s.json", [scenario("fine"), scenario("low_b")])
    sim.run("--llmsim-model=local-gguf", "--llmsim-results=base.json").assert_outcomes(passed=1, failed=1)


@pytest.mark.slow
def test_the_bundled_local_judge_is_named_with_its_recorded_accuracy_everywhere(sim: SimProject) -> None:
    from pytest_llmsim.llm.local_model import BUNDLED_MODEL_FILE, JUDGE_CALIBRATION

    assert JUDGE_CALIBRATION[BUNDLED_MODEL_FILE].accuracy == 0.3333  # the one place the figure lives
    _local_judge_recordings(sim)
    result = sim.run("--llmsim-record=none", "--llmsim-baseline=base.json", "--llmsim-results=r.json",
                     "--llmsim-markdown=summary.md", "--html=report.html", "--self-contained-html", base_url="")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([BUNDLED_LINE, CAVEAT_LINE])
    summary = json.loads((sim.path / "r.json").read_text(encoding="utf-8"))["summary"]
    assert summary["local_judge"] == {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "bundled": True,
        "calibration": {"agreed": 16, "cases": 48, "accuracy": 0.3333, "mean_absolute_error": 1.0,
                        "false_passes": 0, "should_fail": 16, "false_pass_rate": 0.0,
                        "command": "python -m pytest scenarios/ -k calibration_only --llmsim-calibrate "
                                   "calibration/heldout -o llmsim_prompts_dir=pytest_llmsim/templates "
                                   "--llmsim-judge-method logprobs",
                        "measured": "2026-12-07", "thresholds": None}}
    markdown = (sim.path / "summary.md").read_text(encoding="utf-8")
    assert "> ⚠️ **Judge:** The judge is the bundled local model SmolLM2\\-135M\\-Instruct\\.Q4\\_1\\.gguf" in markdown
    assert "> ⚠️ The score deltas since the baseline come from the local judge" in markdown
    html = (sim.path / "report.html").read_text(encoding="utf-8")
    assert "<th>Judge</th><td>The judge is the bundled local model SmolLM2-135M-Instruct.Q4_1.gguf, which agreed " \
           "with the shipped calibration labels on 16 of 48 conversations (33.3%" in html
    quiet = sim.run("-q", "--llmsim-record=none", base_url="")
    quiet.stdout.fnmatch_lines([BUNDLED_LINE])


@pytest.mark.slow
def test_no_judge_line_for_an_endpoint_or_a_replay_of_another_judge(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-results=r.json", "--llmsim-markdown=summary.md")  # the scripted endpoint
    assert "the judge is" not in result.stdout.str()
    assert json.loads((sim.path / "r.json").read_text(encoding="utf-8"))["summary"]["local_judge"] is None
    assert "Judge:" not in (sim.path / "summary.md").read_text(encoding="utf-8")
    replay = sim.run("--llmsim-record=none", "--llmsim-min-judge-accuracy=0.9", base_url="")  # gpt-4o-mini judged
    replay.assert_outcomes(passed=1)
    assert "the judge is" not in replay.stdout.str() and replay.ret == pytest.ExitCode.OK
    replay.stdout.fnmatch_lines(["llmsim: judge gate (llmsim_min_judge_accuracy) not checked: no calibration set "
                                 "given (--llmsim-calibrate)"])


@pytest.mark.slow
def test_the_judge_gate_in_the_ini_refuses_the_bundled_judge_by_its_recorded_accuracy(sim: SimProject) -> None:
    _local_judge_recordings(sim)
    sim.write_ini(llmsim_min_judge_accuracy="80%")
    result = sim.run("--llmsim-record=none", "--llmsim-results=r.json", base_url="")
    result.assert_outcomes(passed=1, failed=1)
    line = ("judge accuracy 33.3% (16 of 48 on the shipped calibration set, recorded for the bundled local model "
            "SmolLM2-135M-Instruct.Q4_1.gguf: `python -m pytest scenarios/ -k calibration_only --llmsim-calibrate "
            "calibration/heldout -o llmsim_prompts_dir=pytest_llmsim/templates --llmsim-judge-method logprobs`, "
            "2026-12-07; no calibration set given) is below the minimum 80.0% (llmsim_min_judge_accuracy)")
    result.stdout.fnmatch_lines([f"llmsim gate missed: {line}"])
    assert "not checked" not in result.stdout.str()
    summary = json.loads((sim.path / "r.json").read_text(encoding="utf-8"))["summary"]
    assert summary["gates"]["missed"] == [line]
    # Only the gate fails a run whose scenarios all pass.
    sim.write_scenarios("s.json", [scenario("fine")])
    assert sim.run("--llmsim-record=none", base_url="").ret == pytest.ExitCode.TESTS_FAILED
    sim.write_ini(llmsim_min_judge_accuracy="0.33")
    met = sim.run("--llmsim-record=none", base_url="")
    assert met.ret == pytest.ExitCode.OK
    met.stdout.fnmatch_lines(["llmsim: judge gate (llmsim_min_judge_accuracy) met by the accuracy recorded for the "
                              "local model SmolLM2-135M-Instruct.Q4_1.gguf (33.3%; no calibration set given)"])


@pytest.mark.parametrize("export", ["out.json", "out.ndjson"])
def test_the_export_is_written_once_with_the_calibration_and_its_missed_gate(
        sim: SimProject, monkeypatch: pytest.MonkeyPatch, export: str) -> None:
    """The report plugin asks the calibration for its gate and section before it writes: every export file is
    written once (it was written, then read back and rewritten with the calibration added), and it holds the
    calibration object and the judge gate among the summary's missed gates."""
    from pytest_llmsim.reporting import exports

    writes: list[str] = []
    real = exports._atomic_write

    def counted(path: Path, blocks: Any) -> None:  # every export file is written through here, atomically
        writes.append(Path(path).name)
        real(path, blocks)

    monkeypatch.setattr(exports, "_atomic_write", counted)
    write_set(sim, [case("low_a", 3)])
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-calibrate=calibration", "--llmsim-min-judge-accuracy=1.0", f"--llmsim-results={export}")
    assert result.ret == 1
    files = ["out.json"] if export == "out.json" else ["out.ndjson", "out.summary.json"]
    assert sorted(writes) == sorted(files)
    document = json.loads((sim.path / files[-1]).read_text())
    line = document["calibration"]["gate"]["missed"][0]
    assert line.startswith("judge accuracy 0.0% (0 of 1 ")
    summary = document["summary"] if export == "out.json" else document  # the summary file is the summary
    assert summary["gates"]["missed"] == [line]
