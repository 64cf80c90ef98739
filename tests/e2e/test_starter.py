"""``pytest --llmsim-init`` writes a working example and never overwrites a file; ``pytest`` then runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import verdict
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

STARTER_SCRIPT = {"rules": [
    {"match": {"response_format_type": "json_schema"}, "reply": verdict(3, "Every criterion was met.")},
    {"replies": ["Hello, my parcel is late. The order number is 1042.", "Thank you, bye! [END_CALL]"]},
]}


def test_init_writes_the_example_and_never_overwrites(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--llmsim-init")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["llmsim: wrote scenarios/example.yaml", "llmsim: wrote support_agent.py",
                                 "llmsim: wrote pytest.ini", "*pytest -v*"])
    (pytester.path / "support_agent.py").write_text("# mine\n")
    (pytester.path / "pytest.ini").write_text("[pytest]\nllmsim_paths = scenarios\nmarkers = mine\n")
    again = pytester.runpytest("--llmsim-init")
    assert again.ret == 0
    again.stdout.fnmatch_lines(["llmsim: kept scenarios/example.yaml (it exists; nothing was overwritten)",
                                "llmsim: kept support_agent.py (it exists; nothing was overwritten)",
                                "llmsim: kept pytest.ini (it holds this project's pytest settings; nothing was "
                                "overwritten)"])
    assert "Add these lines" not in again.stdout.str()  # the settings the example needs are there already
    assert (pytester.path / "support_agent.py").read_text() == "# mine\n"
    assert (pytester.path / "pytest.ini").read_text() == "[pytest]\nllmsim_paths = scenarios\nmarkers = mine\n"


@pytest.mark.slow
def test_init_writes_the_ini_settings_and_they_win_over_a_parent_folders(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's ``pytest.ini`` holds its settings and makes its folder the rootdir: a parent folder's pytest
    settings (here pointing llmsim_paths elsewhere) no longer decide what the example's ``pytest`` collects."""
    pytester.makeini("[pytest]\nllmsim_paths = elsewhere\n")
    project = pytester.mkdir("project")
    monkeypatch.chdir(project)
    assert pytester.runpytest("--llmsim-init").ret == 0
    ini = (project / "pytest.ini").read_text()
    assert "[pytest]\n" in ini and "\nllmsim_paths = scenarios\n" in ini
    assert '# llmsim_agent = {python: "support_agent:reply"}' in ini  # the suite-wide form, shown commented out
    collected = pytester.runpytest("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["scenarios/example.yaml::late_parcel_refund",
                                    "scenarios/example.yaml::change_delivery_address", "2 tests collected*"])
    assert f"rootdir: {project}" in pytester.runpytest("--collect-only").stdout.str()


@pytest.mark.parametrize(("name", "text", "section", "line"), [
    ("pyproject.toml", '[project]\nname = "shop"\n\n[tool.pytest.ini_options]\naddopts = "-ra"\n',
     "[tool.pytest.ini_options]", 'llmsim_paths = ["scenarios"]'),
    ("tox.ini", "[tox]\nenv_list = py311\n\n[pytest]\naddopts = -ra\n", "[pytest]", "llmsim_paths = scenarios"),
    ("setup.cfg", "[metadata]\nname = shop\n\n[tool:pytest]\naddopts = -ra\n", "[tool:pytest]",
     "llmsim_paths = scenarios"),
    ("pytest.ini", "[pytest]\naddopts = -ra\n", "[pytest]", "llmsim_paths = scenarios"),
])
def test_init_prints_the_settings_to_add_to_an_existing_pytest_config(pytester: pytest.Pytester, name: str,
                                                                      text: str, section: str, line: str) -> None:
    """A project whose pytest settings live in a file keeps them: no ``pytest.ini`` shadows that file (and that
    file is never changed); the lines to add are printed in its syntax."""
    (pytester.path / name).write_text(text)
    result = pytester.runpytest("--llmsim-init")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["llmsim: wrote scenarios/example.yaml", "llmsim: wrote support_agent.py",
                                 f"llmsim: kept {name} (it holds this project's pytest settings; nothing was "
                                 "overwritten)",
                                 f"Add these lines under {section} in {name} for the example", "*", "",
                                 f"    {line}", "", "Next: *"])
    assert "llmsim: wrote pytest.ini" not in result.stdout.str()
    assert (pytester.path / name).read_text() == text
    assert sorted(p.name for p in pytester.path.iterdir()) == sorted([name, "scenarios", "support_agent.py"])


def test_a_pyproject_without_pytest_settings_gets_a_pytest_ini(pytester: pytest.Pytester) -> None:
    (pytester.path / "pyproject.toml").write_text('[project]\nname = "shop"\n')
    result = pytester.runpytest("--llmsim-init")
    result.stdout.fnmatch_lines(["llmsim: wrote pytest.ini"])
    assert "Add these lines" not in result.stdout.str()
    assert (pytester.path / "pyproject.toml").read_text() == '[project]\nname = "shop"\n'


@pytest.mark.slow
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


def _listing(root: object) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): relative path -> kind."""
    import os
    from pathlib import Path

    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            path = Path(folder) / name
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            found[str(path.relative_to(str(root)))] = kind
    return found


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
@pytest.mark.parametrize("case", ["dangling-agent-link", "dangling-scenarios-link", "scenarios-is-a-file"])
def test_init_refuses_a_bad_target_before_writing_anything(pytester: pytest.Pytester, case: str) -> None:
    """Issue 24.19: a dangling link or a file named ``scenarios`` gave a traceback and a half-written starter.
    Every target is checked first: one line per problem (the path and what to do), exit 4, nothing written."""
    import os

    if case == "dangling-agent-link":
        os.symlink("gone.py", pytester.path / "support_agent.py")
        named, todo = "support_agent.py", "remove the link or create gone.py"
    elif case == "dangling-scenarios-link":
        os.symlink("gone", pytester.path / "scenarios")
        named, todo = "scenarios", "remove the link or create gone"
    else:
        (pytester.path / "scenarios").write_text("not a folder\n")
        named, todo = "scenarios", "rename or remove the file"
    before = _listing(pytester.path)
    result = pytester.runpytest("--llmsim-init")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    problems = [line for line in result.stdout.lines if line.startswith("llmsim: cannot write the example: ")]
    assert len(problems) == 1, out
    assert f": {named} " in problems[0] and todo in problems[0], problems[0]
    assert "llmsim: nothing was written" in out
    assert _listing(pytester.path) == before  # all or nothing


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a folder even root cannot write: /sys")
def test_init_in_a_read_only_folder_writes_nothing_and_says_so(pytester: pytest.Pytester) -> None:
    """Issue 24.19: a read-only folder. Run as a user would (a subprocess in that folder); under root, whom file
    modes do not stop, /sys/kernel plays the read-only folder."""
    import os

    folder = pytester.path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        folder = pytester.path.__class__("/sys/kernel")
    else:
        folder.chmod(0o500)
    before = _listing(folder) if folder.name == "ro" else None
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmsim-init"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    problems = [line for line in run.stdout.splitlines() if line.startswith("llmsim: cannot write the example: ")]
    assert len(problems) == 1, out
    assert str(folder) in problems[0] and "[Errno" in problems[0], problems[0]
    assert "llmsim: nothing was written" in out
    if before is not None:
        assert _listing(folder) == before
    else:
        assert not any((folder / name).exists() for name in ("scenarios", "support_agent.py", "pytest.ini"))
