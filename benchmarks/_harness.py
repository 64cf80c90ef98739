"""Shared helpers of the benchmark scripts: a generated suite, a loopback server, a timed pytest run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

TEMPLATES = {
    "agent.j2": "AGENT {{ scenario_name }} {{ CITY }}. End with {{ end_marker }}.",
    "client.j2": "CLIENT {{ scenario_name }} {{ CITY }}.",
    "evaluator.j2": "EVALUATOR {{ scenario_name }}\n{{ transcript_text }}",
}


def conversation_script(agent_turns: int) -> dict:
    """Client and agent alternate ``agent_turns`` times, the agent ends the call, the judge scores once:
    2 * agent_turns + 1 calls per conversation."""
    agent = [f"Agent line {i}" for i in range(agent_turns - 1)] + ["Confirmed, goodbye [END_CALL]"]
    client = [f"Customer line {i}" for i in range(agent_turns)]
    return {"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": '{"score": 3, "comment": "a fine, polite call"}'},
        {"match": {"system_contains": "AGENT"}, "replies": agent},
        {"match": {"system_contains": "CLIENT"}, "replies": client},
    ]}


def make_suite(root: Path, scenarios: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (root / "prompts" / name).write_text(text)
    (root / "scenarios").mkdir(exist_ok=True)
    data = [{"name": f"s{i:05d}", "variables": {"CITY": f"city{i}", "SEED": i}} for i in range(scenarios)]
    (root / "scenarios" / "bench.json").write_text(json.dumps(data))
    (root / "pytest.ini").write_text("[pytest]\nllmsim_max_retries = 2\n")
    return root


def make_trivial_suite(root: Path, tests: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"def test_{i:05d}():\n    pass\n" for i in range(tests))
    (root / "test_trivial.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


@dataclass
class RunFigures:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int
    tail: str


# Runs one command in a fresh parent so the kernel's child accounting (CPU, peak RSS of the largest process,
# xdist workers included) covers exactly that command.
_MEASURE = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss, "code": code}, fh)
"""


def run_pytest(root: Path, *args: str) -> RunFigures:
    """Run pytest in ``root``; CPU and peak RSS come from the kernel's accounting of that run alone.

    Bytecode caching is left on, as on a user's machine: with ``PYTHONDONTWRITEBYTECODE`` set, pytest
    re-does its assertion rewriting of every plugin package (openai's anyio included) in every process,
    which costs each process about 0.5 s here.
    """
    return run_measured(root, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args])


def run_measured(root: Path, command: list[str]) -> RunFigures:
    """Run ``command`` in ``root`` under the kernel's child accounting (see ``run_pytest``)."""
    figures_file = root / ".figures.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(figures_file), *command], cwd=root,
                          capture_output=True, text=True, env=_bytecode_cache_on())
    wall = time.perf_counter() - started
    figures = json.loads(figures_file.read_text())
    tail = "\n".join(proc.stdout.strip().splitlines()[-3:])
    return RunFigures(wall, figures["cpu"], figures["rss_kb"] / 1024, figures["code"], tail)


def _bytecode_cache_on() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def ideal_seconds(scenarios: int, concurrency: int, calls_per_conversation: int, latency: float) -> float:
    return math.ceil(scenarios / concurrency) * calls_per_conversation * latency


def reference_loop_seconds() -> float:
    """Best of three runs of a fixed pure-Python loop: how fast this machine is, to compare figures across
    machines (seen here: 0.6-1.8 s on the same kind of 2-core VM, from run to run)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(10_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return best


def print_machine_reference() -> None:
    print(f"machine reference: 10^7-step Python loop in {reference_loop_seconds():.2f} s (best of 3)")


def server(script: dict, latency: float) -> ScriptedOpenAIServer:
    srv = ScriptedOpenAIServer(script, latency=latency)
    srv.start()
    return srv
