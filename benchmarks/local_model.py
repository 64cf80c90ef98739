"""Speed of the bundled local model on this machine, and where the sample suite's first run spends it.

    python benchmarks/local_model.py --replies 5      # load time, generation and prompt-evaluation speed
    python benchmarks/local_model.py --suite          # the sample suite: prompt tokens sent vs evaluated

``--replies``: starts the same llama.cpp server the plugin starts (bundled SmolLM2 GGUF unless --model), sends
``--replies`` chat requests of about the plugin's size (the shop agent prompt, up to 80 reply tokens, fixed
seeds) and prints per-request latency and tokens per second. Generation speed is measured from requests whose
prompt the server already holds (same prompt again), so it excludes prompt evaluation.

``--suite``: a first run of the sample suite (``pytest scenarios/``, no cache, no recordings) against a server
started with the plugin's own command (``local_model.server_command``) and the local model's option defaults,
with llama.cpp's per-request performance lines switched on. It prints the wall time, the prompt tokens sent
(the servers' ``usage.prompt_tokens``, summed by the plugin's results export) and the prompt tokens llama.cpp
actually evaluated (``llama_perf_context_print: prompt eval time = ... / N tokens``, one line per completion),
and the server's time in prompt evaluation and in generation. ``--server-arg`` appends server flags (the last
of a repeated flag wins), to try a setting before changing the plugin's command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pytest_llmsim.config import options
from pytest_llmsim.llm import local_model

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = (ROOT / "prompts" / "agent.j2").read_text(encoding="utf-8")
_PERF = re.compile(r"llama_perf_context_print:\s+(prompt eval|eval) time =\s+([\d.]+) ms /\s+(\d+) (?:tokens|runs)")


def chat(base_url: str, system: str, user: str, max_tokens: int, seed: int) -> tuple[float, dict]:
    body = json.dumps({"model": local_model.LOCAL_MODEL_NAME, "max_tokens": max_tokens, "temperature": 0.7,
                       "seed": seed, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": user}]}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        data = json.loads(response.read())
    return time.perf_counter() - started, data["usage"]


def replies(model: Path, count: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        server = local_model.ensure_local_server(model, Path(tmp) / "state", os.getpid())
        load_s = time.perf_counter() - started
        try:
            cold, warm = [], []
            for i in range(count):
                system = f"Call #{i}. " + SYSTEM  # a new prefix: the whole prompt is evaluated
                user = "Hello, I would like two packs of chicken fillet delivered to Moscow."
                cold.append(chat(server.base_url, system, user, max_tokens, seed=i))
                warm.append(chat(server.base_url, system, user, max_tokens, seed=i + 1000))
        finally:
            local_model.stop_local_server(Path(tmp) / "state")
    gen_rates = [u["completion_tokens"] / s for s, u in warm]
    prompt_rates = []
    for cold_s, cold_u in cold:
        gen_time = cold_u["completion_tokens"] / statistics.median(gen_rates)
        prompt_rates.append(cold_u["prompt_tokens"] / max(cold_s - gen_time, 1e-3))
    print(f"model={model.name} load+smoke_s={load_s:.2f} replies={count} max_tokens={max_tokens}")
    print(f"cold request (full prompt eval): median {statistics.median(s for s, _ in cold):.2f}s, "
          f"prompt {statistics.median(u['prompt_tokens'] for _, u in cold)} tokens, "
          f"reply {statistics.median(u['completion_tokens'] for _, u in cold)} tokens")
    print(f"generation: median {statistics.median(gen_rates):.1f} tokens/s; "
          f"prompt evaluation: median {statistics.median(prompt_rates):.0f} tokens/s")


@dataclass
class ServerWork:
    """What llama.cpp reported for every completion of a run (its ``llama_perf_context_print`` lines)."""

    completions: int
    prompt_tokens_evaluated: int
    prompt_eval_s: float
    generated_tokens: int
    generation_s: float


def server_work(log_text: str) -> ServerWork:
    prompt = [(float(ms), int(n)) for kind, ms, n in _PERF.findall(log_text) if kind == "prompt eval"]
    generation = [(float(ms), int(n)) for kind, ms, n in _PERF.findall(log_text) if kind == "eval"]
    return ServerWork(len(prompt), sum(n for _, n in prompt), sum(ms for ms, _ in prompt) / 1000,
                      sum(n for _, n in generation), sum(ms for ms, _ in generation) / 1000)


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (Linux ``VmHWM``), 0 where /proc does not say."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc/PID/stat``), 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_defaults() -> list[str]:
    """``-o name=value`` for every option whose default differs on the local model, so a run against an
    explicitly given server behaves as the plugin's own local run."""
    return [arg for row in options.OPTIONS if row.local_default is not None
            for arg in ("-o", f"{row.ini}={row.local_default}")]


def suite(model: Path, threads: int | None, server_args: list[str], pytest_args: list[str],
          keep_log: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = local_model._free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        command = local_model.server_command(model, port, threads or max(1, os.cpu_count() or 1), 4096, verbose=True)
        command += server_args
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + local_model.STARTUP_TIMEOUT
            while not local_model._answers(base_url, 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.2)
            results = work / "results.json"
            run = [sys.executable, "-m", "pytest", "scenarios/", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                   "--llmsim-recordings=off", f"--llmsim-cache-dir={work / 'cache'}", f"--llmsim-base-url={base_url}",
                   f"--llmsim-model={local_model.LOCAL_MODEL_NAME}", f"--llmsim-results={results}",
                   *local_defaults(), *pytest_args]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "OPENAI_API_KEY": ""})
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            pytest_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            peak_mb, server_cpu = _peak_rss_mb(proc.pid), _cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        summary = json.loads(results.read_text())["summary"]
        counts = server_work(log_path.read_text(errors="replace"))
        if keep_log is not None:
            keep_log.write_bytes(log_path.read_bytes())
    print("server:", shlex.join(["python", *command[1:]]).replace(str(model), model.name))
    print("pytest:", done.stdout.strip().splitlines()[-1])
    print(f"cpu: server {server_cpu:.1f} s, pytest {pytest_cpu:.1f} s")
    print(f"wall {wall:.1f} s; {counts.completions} completions; prompt tokens sent {summary['prompt_tokens']}, "
          f"evaluated {counts.prompt_tokens_evaluated} ({counts.prompt_eval_s:.1f} s); "
          f"generated {counts.generated_tokens} ({counts.generation_s:.1f} s); "
          f"completion tokens (usage) {summary['completion_tokens']}; server peak RSS {peak_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--suite", action="store_true", help="run the sample suite and count prompt tokens")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag(s), split like a shell")
    parser.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument(s)")
    parser.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here")
    args = parser.parse_args()
    model = args.model or local_model.find_bundled_model()
    if model is None:
        raise SystemExit(local_model.missing_backend_message())
    if args.suite:
        suite(model, args.threads, [a for text in args.server_arg for a in shlex.split(text)],
              [a for text in args.pytest_arg for a in shlex.split(text)], args.keep_log)
    else:
        replies(model, args.replies, args.max_tokens)


if __name__ == "__main__":
    main()
