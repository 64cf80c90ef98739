"""The engine is plain Python: usable from a script, without pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TEMPLATES, default_script
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow


def test_engine_imports_and_runs_with_pytest_unimportable(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name, text in TEMPLATES.items():
        (prompts / name).write_text(text)
    (tmp_path / "s.json").write_text(
        '[{"name": "a", "variables": {"LOCATIONS": "x", "PERSONALITY": "y"}},'
        ' {"name": "low_b", "variables": {"LOCATIONS": "x", "PERSONALITY": "y"}}]'
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pytest"] = None  # any 'import pytest' now fails
        from pathlib import Path
        from pytest_llmsim import (EndpointSettings, RoleSettings, Runner, RunSettings, ScenarioJob,
                                   load_scenario_file)
        role = RoleSettings("m", "{{role}}.j2", 0.0, 50)
        settings = RunSettings(
            endpoint=EndpointSettings(base_url=sys.argv[1], max_retries=0),
            agent=RoleSettings("m", "agent.j2", 0.0, 50), client=RoleSettings("m", "client.j2", 0.0, 50),
            evaluator=RoleSettings("m", "evaluator.j2", 0.0, 50),
            prompts_dir=Path({str(prompts)!r}), cache_dir=Path({str(tmp_path / "cache")!r}),
        )
        entries = load_scenario_file(Path({str(tmp_path / "s.json")!r}))
        jobs = [ScenarioJob(f"s.json::{{e.item_name}}", "s.json", e.scenario) for e in entries]
        with Runner(settings) as runner:
            for result in runner.run_all(jobs):
                print(result.scenario, result.status, result.score, result.total_turns)
        assert "_pytest" not in sys.modules
        """
    )
    with ScriptedOpenAIServer(default_script()) as server:
        out = subprocess.run([sys.executable, "-c", script, server.base_url], capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["a passed 3 6", "low_b failed 1 6"]
