"""Plugin CPU cost per LLM call against a zero-latency loopback server.

    python benchmarks/overhead.py --scenarios 200 --concurrency 16

CPU time is the pytest process's user+sys (kernel child accounting); the server runs in this process, so its
CPU is not counted. A ``--collect-only`` run of the same suite is subtracted as the start-up baseline.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, run_pytest, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agent-turns", type=int, default=5)
    args = parser.parse_args()
    srv = server(conversation_script(args.agent_turns), 0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_suite(Path(tmp) / "suite", args.scenarios)
            base = run_pytest(root, "--collect-only", f"--llmsim-base-url={srv.base_url}")
            fig = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all",
                             f"--llmsim-concurrency={args.concurrency}")
            calls = srv.stats()["requests"]
            print(fig.tail)
    finally:
        srv.stop()
    per_call_ms = 1000 * fig.cpu_s / calls
    net_ms = 1000 * (fig.cpu_s - base.cpu_s) / calls
    print(f"scenarios={args.scenarios} calls={calls} wall_s={fig.wall_s:.2f} cpu_s={fig.cpu_s:.2f} "
          f"startup_cpu_s={base.cpu_s:.2f} rss_mb={fig.peak_rss_mb:.1f} exit={fig.exit_code}")
    print(f"plugin CPU per LLM call: {per_call_ms:.3f} ms total, {net_ms:.3f} ms excluding start-up/collection")


if __name__ == "__main__":
    main()
