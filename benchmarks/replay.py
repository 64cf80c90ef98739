"""Replay of a fully recorded suite vs a plain pytest run of as many trivial tests.

    python benchmarks/replay.py --scenarios 1000 --repeat 3

Records the suite once against a zero-latency loopback server (recording files and the disk cache), stops the
server, then times, alternating, ``--llmsim-record=none`` replays from the recording files alone (an empty
cache directory), from the disk cache alone (``--llmsim-recordings=off``), and runs of N trivial passing
tests; prints the medians, their ratios and the peak RSS of each.
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
        empty = Path(tmp) / "empty-cache"
        replays, cached, plains = [], [], []
        for _ in range(args.repeat):
            replays.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none",
                                      f"--llmsim-cache-dir={empty}"))
            cached.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none",
                                     "--llmsim-recordings=off"))
            plains.append(run_pytest(trivial))
        print(replays[-1].tail)
    replay_wall = statistics.median(r.wall_s for r in replays)
    cached_wall = statistics.median(r.wall_s for r in cached)
    plain_wall = statistics.median(r.wall_s for r in plains)
    print(f"scenarios={args.scenarios} repeats={args.repeat} exit codes recordings={[r.exit_code for r in replays]} "
          f"cache={[r.exit_code for r in cached]}")
    print(f"recordings median wall_s={replay_wall:.2f} peak_rss_mb={max(r.peak_rss_mb for r in replays):.1f}")
    print(f"cache      median wall_s={cached_wall:.2f} peak_rss_mb={max(r.peak_rss_mb for r in cached):.1f}")
    print(f"plain      median wall_s={plain_wall:.2f} peak_rss_mb={max(r.peak_rss_mb for r in plains):.1f}")
    print(f"ratio recordings/plain={replay_wall / plain_wall:.2f} cache/plain={cached_wall / plain_wall:.2f}")


if __name__ == "__main__":
    main()
