"""The pull-request workflow of docs/ci.md, run locally: record on main, change the agent prompt on a branch and
re-record, then replay the branch as CI does (no endpoint, no key) against main's recordings."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import AGENT_REPLIES, CLIENT_REPLIES, SimProject, default_script, scenario, verdict
from pytest_llmsim.reporting.markdown import md_text

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "ci" / "llmsim.yml"


def _ci_pytest_args(baseline: str) -> list[str]:
    """The workflow's pytest command, with its ``$BASELINE`` filled in as the workflow's shell would when the base
    branch has recordings (``baseline``: ``--llmsim-baseline=PATH``, PATH standing for ``../baseline/recordings``)."""
    lines = [line.strip() for line in WORKFLOW.read_text().splitlines()]
    command = next(line for line in lines if line.startswith("pytest "))
    assigned = next(re.search(r'then BASELINE="([^"]*)"', line) for line in lines if 'then BASELINE="' in line)
    assert assigned is not None
    path = baseline.removeprefix("--llmsim-baseline=")
    value = assigned.group(1).replace("../baseline/recordings", path)
    return shlex.split(command.replace("$BASELINE", value))[1:]


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_pull_request_workflow_shows_the_changed_conversation_and_the_score_drop(
        sim: SimProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = sim.path
    # main: two scenarios recorded against the endpoint, recordings committed (the cache is not)
    sim.write_scenarios("shop.json", [scenario("reorder"), scenario("new_customer")])
    sim.run().assert_outcomes(passed=2)
    (project / ".gitignore").write_text(".llmsim_cache/\n__pycache__/\n.pytest_cache/\n")
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "conversations recorded")

    # a branch changes the agent's prompt; its author re-records with the endpoint and commits
    _git(project, "checkout", "-q", "-b", "shorter-prompt")
    (project / "prompts" / "agent.j2").write_text("AGENT v2 for {{ scenario_name }}. {{ end_marker }}")
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "Agent: Which product?"}, "reply": verdict(1, "Never confirmed the order.")},
        {"match": {"system_contains": "AGENT v2"}, "replies": ["Which product?", "Bye. [END_CALL]"]},
        *rules,
    ]})
    sim.run("--llmsim-record=once").assert_outcomes(failed=2)
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "shorter agent prompt")
    assert "recordings/scenarios/shop.json/reorder.json" in _git(project, "show", "--stat", "--format=", "HEAD")

    # CI on the pull request: a fresh checkout (no cache), main's recordings as the baseline, no endpoint, no key
    shutil.rmtree(project / ".llmsim_cache")
    baseline_dir = tmp_path / "baseline"
    baseline_dir.mkdir()
    archive = subprocess.run(["git", "archive", "main", "recordings"], cwd=project, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive, check=True)
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    requests = sim.server.stats()["requests"]
    ci = sim.run(*_ci_pytest_args(f"--llmsim-baseline={baseline_dir / 'recordings'}"), base_url="")

    assert sim.server.stats()["requests"] == requests  # every call replayed from the committed recordings
    assert ci.ret == pytest.ExitCode.TESTS_FAILED
    ci.stdout.fnmatch_lines(["*2 scenarios regressed since the baseline*(llmsim_fail_on_regression)*"])
    markdown = (project / "llmsim.md").read_text(encoding="utf-8")
    assert len(markdown.encode("utf-8")) < 1_000_000
    assert "regressed" in markdown
    for nodeid in ("scenarios/shop.json::reorder", "scenarios/shop.json::new_customer"):
        row = next(line for line in markdown.splitlines() if line.startswith("|") and md_text(nodeid) in line)
        assert "3 → 1" in row and "-2" in row, row
    assert f"- 2. Agent: {AGENT_REPLIES[0]}\n+ 2. Agent: Which product?" in markdown  # the turn-level diff
    assert CLIENT_REPLIES[0] in markdown
    assert "Never confirmed the order." in markdown
    assert step_summary.read_text(encoding="utf-8") == "earlier step\n" + markdown
    html = (project / "report.html").read_text(encoding="utf-8")
    assert "llmsim-diff" in html and "Which product?" in html
    assert (project / "junit.xml").is_file()
