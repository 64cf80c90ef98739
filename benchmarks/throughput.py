"""Throughput against a loopback server with fixed latency: wall time vs the ideal bound.

    python benchmarks/throughput.py --scenarios 200 --latency 0.5 --concurrency 50 --agent-turns 5
    python benchmarks/throughput.py --scenarios 200 --trials 5 --modes n0      # k conversations per scenario

Runs the generated suite with ``-n 0`` at the given concurrency and with ``-n 2`` (half the concurrency per
worker, same total in flight), each on a fresh cache, and prints wall seconds, LLM calls, calls per second,
peak requests in flight, the ideal ``ceil(M x trials / concurrency) x calls_per_conversation x latency`` and
wall/ideal. ``--trials K`` runs every scenario K times (``--llmsim-trials``; ``--trial-items``: one item per trial).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _harness import conversation_script, ideal_seconds, make_suite, print_machine_reference, run_pytest, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--agent-turns", type=int, default=5)
    parser.add_argument("--modes", default="n0,n2", help="comma list of n0, n2")
    parser.add_argument("--trials", type=int, default=1, help="conversations per scenario (--llmsim-trials)")
    parser.add_argument("--trial-items", action="store_true", help="one pytest item per trial")
    args = parser.parse_args()
    print_machine_reference()
    calls = 2 * args.agent_turns + 1
    srv = server(conversation_script(args.agent_turns), args.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_suite(Path(tmp) / "suite", args.scenarios)
            for mode in args.modes.split(","):
                srv.reset()
                workers = 0 if mode == "n0" else int(mode[1:])
                per_process = args.concurrency if workers == 0 else max(1, args.concurrency // workers)
                extra = [] if workers == 0 else ["-n", str(workers)]
                trials = [f"--llmsim-trials={args.trials}"] + (["--llmsim-trial-items"] if args.trial_items else [])
                fig = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all",
                                 f"--llmsim-concurrency={per_process}", *trials, *extra)
                stats = srv.stats()
                ideal = ideal_seconds(args.scenarios * args.trials, args.concurrency, calls, args.latency)
                rows.append((mode, per_process, fig, stats, ideal))
                print(fig.tail)
    finally:
        srv.stop()
    print(f"scenarios={args.scenarios} trials={args.trials}{' (one item each)' if args.trial_items else ''} "
          f"latency={args.latency}s calls/conversation={calls} "
          f"total concurrency={args.concurrency}")
    print(f"{'mode':<5} {'conc/proc':>9} {'wall_s':>8} {'calls':>6} {'calls/s':>8} {'peak':>5} "
          f"{'ideal_s':>8} {'wall/ideal':>10} {'rss_mb':>7} exit")
    for mode, per_process, fig, stats, ideal in rows:
        print(f"{mode:<5} {per_process:>9} {fig.wall_s:>8.2f} {stats['requests']:>6} "
              f"{stats['requests'] / fig.wall_s:>8.1f} {stats['peak_in_flight']:>5} {ideal:>8.2f} "
              f"{fig.wall_s / ideal:>10.3f} {fig.peak_rss_mb:>7.1f} {fig.exit_code}")


if __name__ == "__main__":
    main()
