"""One settings path: ``llmsim`` finds the ini file pytest finds (pytest's own ``determine_setup`` is the oracle),
and from one project folder, with the same ini file and environment, pytest and ``llmsim run`` resolve the same
settings from the same sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _pytest.config.findpaths import determine_setup

from pytest_llmsim.apps.cli import resolve_options
from pytest_llmsim.config.resolve import find_ini, pytest_rows
from pytest_llmsim.plugin.hooks import OPTIONS_KEY

# Each layout: files (path -> text), the folder pytest starts in, its arguments.
LAYOUTS: dict[str, tuple[dict[str, str], str, list[str]]] = {
    "pytest.ini without a section beats tox.ini": (
        {"pytest.ini": "", "tox.ini": "[pytest]\nllmsim_seed = 2\n", "s/x.json": "[]"}, ".", ["s/x.json"]),
    "a pyproject.toml without pytest's table is passed over for a parent's tox.ini": (
        {"tox.ini": "[pytest]\nllmsim_seed = 3\n", "s/pyproject.toml": "[project]\nname = 'x'\n", "s/x.json": "[]"},
        ".", ["s/x.json"]),
    "only a pyproject.toml without pytest's table: it is the ini file, with no values": (
        {"pyproject.toml": "[project]\nname = 'x'\n", "s/x.json": "[]"}, "s", []),
    "pyproject.toml [tool.pytest.ini_options]": (
        {"pyproject.toml": "[tool.pytest.ini_options]\nllmsim_seed = 4\nllmsim_paths = ['a', 'b']\n",
         "s/x.json": "[]"}, ".", ["s"]),
    "setup.cfg [tool:pytest] in the argument's folder": (
        {"setup.cfg": "[metadata]\nname = x\n", "s/setup.cfg": "[tool:pytest]\nllmsim_seed = 5\n", "s/x.json": "[]"},
        ".", ["s/x.json::name"]),
    "a setup.cfg without [tool:pytest] is passed over": (
        {"s/setup.cfg": "[metadata]\nname = x\n", "tox.ini": "[pytest]\nllmsim_seed = 6\n", "s/x.json": "[]"},
        "s", []),
    "no ini file: setup.py names the rootdir": ({"setup.py": "", "a/b/x.json": "[]"}, "a", ["b"]),
    "no ini file, no setup.py: the common folder of the invocation folder and the paths": (
        {"a/b/x.json": "[]", "a/c/y.json": "[]"}, "a/c", ["../b/x.json"]),
    "two paths whose common folder has no ini file: the first path's own": (
        {"a/tox.ini": "[pytest]\nllmsim_seed = 7\n", "a/x.json": "[]", "b/y.json": "[]"}, ".", ["a", "b"]),
    "pytest.toml": ({"pytest.toml": "[pytest]\nllmsim_seed = '8'\n", "tox.ini": "[pytest]\nllmsim_seed = 1\n",
                     "s/x.json": "[]"}, ".", ["s"]),
    "pyproject.toml [tool.pytest] (native TOML)": (
        {"pyproject.toml": "[tool.pytest]\nllmsim_seed = '9'\n", "s/x.json": "[]"}, "s", []),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_llmsim_finds_the_ini_file_and_rootdir_pytest_finds(tmp_path: Path, layout: str) -> None:
    files, start, args = LAYOUTS[layout]
    project = tmp_path / "project"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text, encoding="utf-8")
    cwd = (project / start).resolve()
    ours = find_ini(args, cwd)
    # pytest resolves relative arguments against the process's working folder, as when it is started there
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        rootdir, inipath, values, _ = determine_setup(inifile=None, override_ini=None, args=args,
                                                      rootdir_cmd_arg=None, invocation_dir=cwd)
    assert (ours.rootdir, ours.path) == (rootdir, inipath)
    assert dict(ours.values) == {key: value.value for key, value in values.items()}


def test_pytest_and_llmsim_run_resolve_identical_settings_from_one_project(pytester: pytest.Pytester,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The ini file sits in pyproject.toml above a subfolder with a pyproject.toml of its own (no pytest table) and a
    setup.cfg without [tool:pytest]; settings come from the ini file and from the environment variables of the
    option table (MAX_TURNS, OPENAI_MODEL, CONCURRENCY): both fronts resolve every value, from the same source."""
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\nllmsim_seed = 77\nllmsim_cache_dir = 'c'\n"
                               "llmsim_paths = ['suite']\nllmsim_timeout = 12\n")
    suite = pytester.path / "suite"
    suite.mkdir()
    (suite / "pyproject.toml").write_text("[project]\nname = 'inner'\n")
    (suite / "setup.cfg").write_text("[metadata]\nname = inner\n")
    (suite / "s.json").write_text(json.dumps([{"name": "a", "personality": "calm", "task": "t"}]))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLMSIM_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("MAX_TURNS", "7"), ("OPENAI_MODEL", "model-from-env"), ("CONCURRENCY", "3"),
                        ("PORT", "not-a-port")):  # PORT: an option pytest does not read (llmsim serve's)
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")

    config = pytester.parseconfigure("suite/s.json")
    by_pytest = config.stash[OPTIONS_KEY]
    with pytest.raises(Exception, match="llmsim_port \\(env PORT\\) must be a whole number"):
        resolve_options([Path("suite/s.json")], {}, invocation_dir=pytester.path)
    monkeypatch.delenv("PORT")
    by_llmsim = resolve_options([Path("suite/s.json")], {}, invocation_dir=pytester.path)

    shared = [row.ini for row in pytest_rows()]
    assert {k: by_llmsim[k] for k in shared} == dict(by_pytest.values)
    assert {k: by_llmsim.source(k) for k in shared} == dict(by_pytest.sources)
    assert (by_llmsim.ini_dir, by_llmsim.local) == (by_pytest.ini_dir, by_pytest.local) == (pytester.path, False)
    expected = {"llmsim_max_turns": (7, "env MAX_TURNS"), "llmsim_model": ("model-from-env", "env OPENAI_MODEL"),
                "llmsim_concurrency": (3, "env CONCURRENCY"), "llmsim_seed": (77, "ini"),
                "llmsim_timeout": (12.0, "ini"), "llmsim_cache_dir": (pytester.path / "c", "ini"),
                "llmsim_paths": (["suite"], "ini"), "llmsim_base_url": ("http://127.0.0.1:9/v1", "env OPENAI_BASE_URL")}
    assert {k: (by_pytest[k], by_pytest.source(k)) for k in expected} == expected
    # the command line beats the environment in both fronts
    config = pytester.parseconfigure("suite/s.json", "--llmsim-max-turns=9")
    flagged = resolve_options([Path("suite/s.json")], {"llmsim_max_turns": "9"}, invocation_dir=pytester.path)
    assert config.stash[OPTIONS_KEY]["llmsim_max_turns"] == flagged["llmsim_max_turns"] == 9
    assert config.stash[OPTIONS_KEY].source("llmsim_max_turns") == flagged.source("llmsim_max_turns")


def test_a_bad_value_is_a_usage_error_naming_the_variable_or_flag_in_both_fronts(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("MAX_TURNS", "many")
    result = pytester.runpytest("-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llmsim_max_turns (env MAX_TURNS) must be a whole number, got 'many'*"])
    with pytest.raises(Exception, match=r"llmsim_max_turns \(env MAX_TURNS\) must be a whole number, got 'many'"):
        resolve_options([], {}, invocation_dir=pytester.path)
    monkeypatch.delenv("MAX_TURNS")
    # the checks of the whole (a base URL pytest took as is, and every call failed): the same in both fronts
    result = pytester.runpytest("-p", "no:randomly", "--llmsim-base-url=localhost:8000/v1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmsim-base-url (llmsim_base_url): 'localhost:8000/v1' is not an http:// or "
                                 "https:// URL with a host*"])
    with pytest.raises(Exception, match="--base-url \\(llmsim_base_url\\): 'localhost:8000/v1' is not an http"):
        resolve_options([], {"llmsim_base_url": "localhost:8000/v1"}, invocation_dir=pytester.path)


def test_the_pytest_header_names_the_settings_taken_from_the_environment(pytester: pytest.Pytester,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\n")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "TIMEOUT_SEC", "CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    assert "from the environment" not in pytester.runpytest("-p", "no:randomly", "--co").stdout.str()
    monkeypatch.setenv("MAX_TURNS", "5")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = pytester.runpytest("-p", "no:randomly", "--co")
    result.stdout.fnmatch_lines(["llmsim: from the environment: llmsim_base_url (OPENAI_BASE_URL), "
                                 "llmsim_max_turns (MAX_TURNS)"])
