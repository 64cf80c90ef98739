"""Replay of a fully recorded suite vs a plain pytest run of as many trivial tests, and the recording run's size.

    python benchmarks/replay.py --scenarios 1000 --repeat 3
    python benchmarks/replay.py --scenarios 10000 --workers 2 --repeat 3     # issue 17's scale row

Records the suite once against a zero-latency loopback server (recording files and the disk cache; ``-n
--workers`` when given) with a JSON export, and checks that the export holds one passed result per scenario;
the peak RSS printed for a run is that of its largest process (the kernel's child accounting: the controller
or one xdist worker). Then stops the server and times, alternating, ``--llmsim-record=none`` replays from the
recording files alone (an empty cache directory), from the disk cache alone (``--llmsim-recordings=off``), and
runs of N trivial passing tests; prints the medians, their ratios and the peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, make_trivial_suite, print_machine_reference, run_pytest, server


def reported_results(export: Path, scenarios: int) -> str:
    """How many results the export holds and how many passed; stops the benchmark if any scenario is missing."""
    results = json.loads(export.read_text())["results"]
    passed = sum(1 for result in results if result.get("status") == "passed")
    names = {result.get("nodeid") for result in results}
    if len(results) != scenarios or len(names) != scenarios:
        raise SystemExit(f"the export holds {len(results)} results ({len(names)} distinct) of {scenarios}")
    return f"{len(results)} results reported, {passed} passed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="xdist workers of the recording run (-n)")
    args = parser.parse_args()
    print_machine_reference()
    with tempfile.TemporaryDirectory() as tmp:
        suite = make_suite(Path(tmp) / "suite", args.scenarios)
        trivial = make_trivial_suite(Path(tmp) / "trivial", args.scenarios)
        export = Path(tmp) / "results.json"
        srv = server(conversation_script(5), 0.0)
        url = srv.base_url
        workers = ["-n", str(args.workers)] if args.workers else []
        record = run_pytest(suite, f"--llmsim-base-url={url}", *workers, f"--llmsim-results={export}")
        srv.stop()
        print(f"recorded{' with -n ' + str(args.workers) if workers else ''}: {record.tail.splitlines()[-1]} "
              f"in {record.wall_s:.1f}s, peak RSS of the largest process {record.peak_rss_mb:.1f} MB")
        print(f"export: {reported_results(export, args.scenarios)}")
        empty = Path(tmp) / "empty-cache"
        replays, cached, plains = [], [], []
        for _ in range(args.repeat):
            replays.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none",
                                      f"--llmsim-cache-dir={empty}"))
            cached.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none",
                                     "--llmsim-recordings=off"))
            plains.append(run_pytest(trivial))
        print(replays[-1].tail)
    print(f"scenarios={args.scenarios} repeats={args.repeat} exit codes recordings={[r.exit_code for r in replays]} "
          f"cache={[r.exit_code for r in cached]}")
    for name, runs in (("recordings", replays), ("cache", cached), ("plain", plains)):
        walls = [r.wall_s for r in runs]
        print(f"{name:<10} median wall_s={statistics.median(walls):.2f} (min {min(walls):.2f}, max {max(walls):.2f}) "
              f"peak_rss_mb={max(r.peak_rss_mb for r in runs):.1f}")
    plain_wall = statistics.median(r.wall_s for r in plains)
    print(f"ratio recordings/plain={statistics.median(r.wall_s for r in replays) / plain_wall:.2f} "
          f"cache/plain={statistics.median(r.wall_s for r in cached) / plain_wall:.2f}")


if __name__ == "__main__":
    main()
