"""Replay of a fully cached suite vs a plain pytest run of as many trivial tests.

    python benchmarks/replay.py --scenarios 1000 --repeat 3

Records the suite once against a zero-latency loopback server, stops the server, then times
``--llmsim-record=none`` replays and runs of N trivial passing tests, alternating, and prints the medians
and their ratio, with the peak RSS of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, make_trivial_suite, print_machine_reference, run_pytest, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_machine_reference()
    with tempfile.TemporaryDirectory() as tmp:
        suite = make_suite(Path(tmp) / "suite", args.scenarios)
        trivial = make_trivial_suite(Path(tmp) / "trivial", args.scenarios)
        srv = server(conversation_script(5), 0.0)
        url = srv.base_url
        record = run_pytest(suite, f"--llmsim-base-url={url}")
        srv.stop()
        print(f"recorded: {record.tail.splitlines()[-1]} in {record.wall_s:.1f}s, "
              f"peak_rss_mb={record.peak_rss_mb:.1f}")
        replays, plains = [], []
        for _ in range(args.repeat):
            replays.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none"))
            plains.append(run_pytest(trivial))
        print(replays[-1].tail)
    replay_wall = statistics.median(r.wall_s for r in replays)
    plain_wall = statistics.median(r.wall_s for r in plains)
    print(f"scenarios={args.scenarios} repeats={args.repeat} exit codes replay={[r.exit_code for r in replays]}")
    print(f"replay median wall_s={replay_wall:.2f} peak_rss_mb={max(r.peak_rss_mb for r in replays):.1f}")
    print(f"plain  median wall_s={plain_wall:.2f} peak_rss_mb={max(r.peak_rss_mb for r in plains):.1f}")
    print(f"ratio replay/plain={replay_wall / plain_wall:.2f}")


if __name__ == "__main__":
    main()
