"""The service against pytest on one workload, and the server's memory on a large batch.

    python benchmarks/service.py --scenarios 200 --latency 0.5 --concurrency 50     # API vs pytest wall time
    python benchmarks/service.py --big 10000                                          # RSS of a 10 000 batch

Wall time: the same generated scenarios through ``pytest`` (``-n 0``) and through ``llmsim serve`` (POST the
batch, poll until completed; from the POST to the last result), each on a fresh cache, against one loopback
server with fixed latency. Memory: the server's peak RSS (``VmHWM`` of its process) over a batch of ``--big``
scenarios at 0 ms latency, and whether every result came back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _harness import conversation_script, ideal_seconds, make_suite, print_machine_reference, run_pytest, server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(url: str, data: object | None = None) -> object:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_service(root: Path, base_url: str, concurrency: int) -> tuple[float, float, dict]:
    """(seconds from the POST to the batch's completion, the server's peak RSS in MB, the batch's status)."""
    port = _free_port()
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench"}
    command = [sys.executable, "-m", "pytest_llmsim.apps.cli", "serve", "--port", str(port), "-o",
               f"llmsim_concurrency={concurrency}", "-o", "llmsim_cache_dir=cache_api"]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _call(f"{url}/api/health")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.1)
        scenarios = json.loads((root / "scenarios" / "bench.json").read_text())
        started = time.perf_counter()
        batch = _call(f"{url}/api/batches", scenarios)["batch_id"]  # type: ignore[index]
        while True:
            status = _call(f"{url}/api/batches/{batch}")
            if status["status"] in ("completed", "failed", "cancelled", "interrupted"):  # type: ignore[index]
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
        return wall, _peak_rss_mb(process.pid), status  # type: ignore[return-value]
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--agent-turns", type=int, default=5)
    parser.add_argument("--big", type=int, default=0, help="only the memory run: a batch of this many at 0 ms")
    args = parser.parse_args()
    print_machine_reference()
    calls = 2 * args.agent_turns + 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.big:
            srv = server(conversation_script(args.agent_turns), 0.0)
            try:
                root = make_suite(Path(tmp) / "big", args.big)
                wall, rss, status = run_service(root, srv.base_url, args.concurrency)
            finally:
                srv.stop()
            print(f"batch of {args.big}: {wall:.1f} s, server peak RSS {rss:.0f} MB, status {status['status']}, "
                  f"results {status.get('completed_scenarios', status.get('progress'))}")
            return
        srv = server(conversation_script(args.agent_turns), args.latency)
        try:
            root = make_suite(Path(tmp) / "suite", args.scenarios)
            figures = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all",
                                 "--llmsim-recordings=off", f"--llmsim-concurrency={args.concurrency}")
            srv.reset()
            wall, rss, status = run_service(root, srv.base_url, args.concurrency)
        finally:
            srv.stop()
    ideal = ideal_seconds(args.scenarios, args.concurrency, calls, args.latency)
    print(f"scenarios={args.scenarios} latency={args.latency}s calls/conversation={calls} concurrency="
          f"{args.concurrency} ideal={ideal:.2f}s")
    print(f"pytest : {figures.wall_s:8.2f} s (whole process), exit {figures.exit_code}")
    print(f"service: {wall:8.2f} s (POST to completion), server peak RSS {rss:.0f} MB, status {status['status']}")
    print(f"service / pytest: {wall / figures.wall_s:.3f}")


if __name__ == "__main__":
    main()
