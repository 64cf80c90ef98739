"""The whole pull-request flow of record mode ``changed``, on a local git repository against the scripted server.

main has recordings of four conversations with a python agent (two already failing); a branch changes the agent
(one conversation regresses, one improves, two are unchanged); CI runs the recipe command of docs/ci.md on the branch:
the unchanged conversations replay with zero calls, the changed ones continue live from the turn where they
diverged and are judged, the markdown summary and the new recordings are written, and the regression fails the
job. Without an endpoint the changed conversations are named as unjudged and the run does not pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_ci_recipe import _ci_pytest_args

from conftest import AGENT_REPLIES, SimProject, default_script, scenario, verdict, write_bot
from pytest_llmsim.reporting.markdown import md_text

pytestmark = pytest.mark.slow

# The gate: scenarios failing on main too are known failures (xfailed); a regression fails the job.
GATE_FLAG = "--llmsim-gate=regressions"
GATE_MISSED = "*1 scenario regressed since the baseline*scenarios/shop.json::regress*"

BAD = ["Hmm.", "Whatever.", "Bye. [END_CALL]"]
BOT = """
GOOD = {good!r}
BAD = {bad!r}
POOR = {poor!r}  # the scenarios this version of the agent answers badly


def reply(messages, context):
    turn = sum(1 for message in messages if message["role"] == "assistant")
    lines = BAD if context.scenario in POOR else GOOD
    return lines[min(turn, len(lines) - 1)]
"""
NAMES = ("same", "regress", "improve", "low_legacy")
SOURCE = "scenarios/shop.json"


def _write_agent(sim: SimProject, poor: tuple[str, ...]) -> None:
    write_bot(sim, BOT.format(good=AGENT_REPLIES, bad=BAD, poor=poor))
    shutil.rmtree(sim.path / "bots" / "__pycache__", ignore_errors=True)  # a same-size rewrite in the same second


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def _main_and_branch(sim: SimProject, tmp_path: Path) -> Path:
    """main: four conversations recorded and committed (``improve`` and ``low_legacy`` failing); a branch whose
    agent answers ``regress`` badly and ``improve`` well, committed without re-recording (the author has no key).
    Returns main's recordings, extracted as the recipe's baseline."""
    project = sim.path
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "Agent: Hmm."}, "reply": verdict(1, "The agent never helped.")},
        *default_script()["rules"],
    ]})
    _write_agent(sim, poor=("improve",))
    sim.write_scenarios("shop.json", [scenario(name, agent={"python": "bots.shop:reply"}) for name in NAMES])
    sim.run().assert_outcomes(passed=2, failed=2)
    (project / ".gitignore").write_text(".llmsim_cache/\n__pycache__/\n.pytest_cache/\n")
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "conversations recorded")

    _git(project, "checkout", "-q", "-b", "agent-change")
    _write_agent(sim, poor=("regress",))
    _git(project, "commit", "-q", "-am", "the agent answers differently")

    shutil.rmtree(project / ".llmsim_cache")  # CI: a fresh checkout
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    archive = subprocess.run(["git", "archive", "main", "recordings"], cwd=project, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
    return baseline / "recordings"


def _ci_args(baseline: Path) -> list[str]:
    args = _ci_pytest_args(f"--llmsim-baseline={baseline}")
    assert "--llmsim-record=changed" in args and GATE_FLAG in args, args
    return args


def _requests_for(sim: SimProject, start: int, name: str) -> int:
    return sum(1 for request in sim.server.requests_log()[start:]
               if any(f" for {name}" in str(m.get("content")) for m in request["body"]["messages"]
                      if m.get("role") == "system"))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "xdist"])
def test_changed_conversations_are_judged_live_in_the_pull_request_job(
        sim: SimProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Under xdist the figures come to the controller on the items' reports."""
    baseline = _main_and_branch(sim, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ci-secret-key")  # the CI secret; the base URL is the scripted server
    start = len(sim.server.requests_log())

    xdist = ("-p", "xdist", f"-n{workers}") if workers else ()
    ci = sim.run(*_ci_args(baseline), *xdist, subprocess=bool(workers))

    # unchanged conversations replay with zero calls; the changed ones are continued live and judged
    assert _requests_for(sim, start, "same") == 0 and _requests_for(sim, start, "low_legacy") == 0
    assert _requests_for(sim, start, "regress") > 0 and _requests_for(sim, start, "improve") > 0
    assert ci.ret == pytest.ExitCode.TESTS_FAILED  # the regression fails the job
    # same and improve pass; regress fails; low_legacy failed on main too: a known failure, not the job's failure
    ci.assert_outcomes(passed=2, failed=1, xfailed=1)
    ci.stdout.fnmatch_lines([f"*1 known failure*{SOURCE}::low_legacy*"])
    ci.stdout.fnmatch_lines([GATE_MISSED])
    ci.stdout.fnmatch_lines([
        "llmsim --llmsim-record=changed: 2 conversation(s) replayed unchanged (no live call); 2 changed and judged "
        f"live ($0.0*): {SOURCE}::regress ($0.0*), {SOURCE}::improve ($0.0*)"])
    assert "not judged" not in ci.stdout.str()
    assert "sk-ci-secret-key" not in ci.stdout.str()

    markdown = (sim.path / "llmsim.md").read_text(encoding="utf-8")
    assert "**Changed conversations**" in markdown
    assert "2 conversation(s) replayed unchanged" in markdown and "2 changed and judged live" in markdown
    assert md_text(f"{SOURCE}::regress") in markdown and md_text(f"{SOURCE}::improve") in markdown
    assert "regressed" in markdown and "Whatever." in markdown
    assert "Known failures" in markdown and md_text(f"{SOURCE}::low_legacy") in markdown

    # the new recordings, for the author to commit (and the job's artifact): only the changed ones
    changed = sorted(line[3:] for line in _git(sim.path, "status", "--porcelain").splitlines()
                     if line.startswith(" M"))
    assert changed == [f"recordings/{SOURCE}/improve.json", f"recordings/{SOURCE}/regress.json"]
    assert "Whatever." in (sim.path / f"recordings/{SOURCE}/regress.json").read_text(encoding="utf-8")

    # committed, the new recordings replay in the next job with no call and no change
    _git(sim.path, "commit", "-q", "-am", "re-recorded by CI")
    again_start = len(sim.server.requests_log())
    again = sim.run(*_ci_args(baseline), *xdist, subprocess=bool(workers))
    assert len(sim.server.requests_log()) == again_start
    again.stdout.fnmatch_lines(["*4 conversation(s) replayed unchanged (no live call); 0 changed*"])
    assert _git(sim.path, "status", "--porcelain", "recordings") == ""


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_without_an_endpoint_changed_conversations_are_named_unjudged_and_the_run_does_not_pass(
        sim: SimProject, tmp_path: Path) -> None:
    baseline = _main_and_branch(sim, tmp_path)
    start = len(sim.server.requests_log())

    ci = sim.run(*_ci_args(baseline), base_url="")  # no key, no base URL: the no-secret fork job

    assert len(sim.server.requests_log()) == start  # nothing sent anywhere, and no local model started
    assert ci.ret != pytest.ExitCode.OK
    ci.assert_outcomes(passed=1, xfailed=1, errors=2)
    out = ci.stdout.str()
    assert "backend_missing" not in out and "local model" not in out.split("short test summary")[-1]
    ci.stdout.fnmatch_lines(["llmsim: record mode=changed, *endpoint=none (replay only: no model is started)"])
    ci.stdout.fnmatch_lines([
        f"*{SOURCE}::regress client turn *: the conversation changed since its recording (the conversation "
        "diverged from the recording at turn 2: recorded 'Hello, Meat Market, how can I help?', now 'Hmm.'); it "
        "cannot be judged without an endpoint: set OPENAI_API_KEY*"])
    ci.stdout.fnmatch_lines([
        "llmsim --llmsim-record=changed: 2 conversation(s) replayed unchanged (no live call); 0 changed and judged "
        f"live ($0.000000); 2 changed but NOT judged (unjudged, never a pass): {SOURCE}::regress, {SOURCE}::improve"])
    ci.stdout.fnmatch_lines(["*2 recording(s) not written: changed, not judged*"])
    assert "unjudged" in out
    markdown = (sim.path / "llmsim.md").read_text(encoding="utf-8")
    assert "2 changed but NOT judged" in markdown
    assert _git(sim.path, "status", "--porcelain", "recordings") == ""  # no recording rewritten


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_live_cost_cap_stops_new_live_calls_and_names_the_rest_unjudged(
        sim: SimProject, tmp_path: Path) -> None:
    baseline = _main_and_branch(sim, tmp_path)
    start = len(sim.server.requests_log())

    ci = sim.run(*_ci_args(baseline), "--llmsim-max-cost-usd=0.0000001", "--llmsim-concurrency=1")

    assert len(sim.server.requests_log()) == start + 1  # the first live call reached the cap; no other was sent
    assert ci.ret != pytest.ExitCode.OK
    ci.assert_outcomes(passed=1, xfailed=1, errors=2)
    ci.stdout.fnmatch_lines(["*it was not continued live because the cost budget is reached: live calls have "
                             "cost $0.0*, llmsim_max_cost_usd is $1e-07*"])
    ci.stdout.fnmatch_lines(["*2 changed but NOT judged (unjudged, never a pass)*"])
