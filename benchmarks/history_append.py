"""What ``--llmsim-history`` adds to a replay: appending a 1 000-scenario run to the history store.

    python benchmarks/history_append.py --scenarios 1000 --repeat 5

Records the suite once against a zero-latency loopback server, then times, alternating, replays
(``--llmsim-record=none``) without and with ``--llmsim-history`` (one history file that grows by one run per
replay, as in CI) and prints the medians of wall time and CPU (the kernel's accounting of each run), the paired
ratios (with / without) and the append alone: ``HistoryStore.append_run`` of the recorded run's records, timed in
this process on a store already holding runs, as a share of the median replay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _harness import conversation_script, make_suite, print_machine_reference, run_pytest, server

from pytest_llmsim.history.store import GitInfo, HistoryStore, now
from pytest_llmsim.model.results import ScenarioRecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print_machine_reference()
    with tempfile.TemporaryDirectory() as tmp:
        suite = make_suite(Path(tmp) / "suite", args.scenarios)
        export = Path(tmp) / "results.json"
        history = Path(tmp) / "history.sqlite"
        srv = server(conversation_script(5), 0.0)
        url = srv.base_url
        record = run_pytest(suite, f"--llmsim-base-url={url}", f"--llmsim-results={export}")
        srv.stop()
        print(f"recorded: {record.tail.splitlines()[-1]} in {record.wall_s:.1f}s")
        plain, with_history = [], []
        for _ in range(args.repeat):
            plain.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none"))
            with_history.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=none",
                                           f"--llmsim-history={history}"))
        codes = [r.exit_code for r in plain + with_history]
        if any(codes):
            raise SystemExit(f"a replay did not pass: exit codes {codes}\n{with_history[-1].tail}")
        stored = HistoryStore(history).runs()
        if len(stored) != args.repeat or any(run.scenarios != args.scenarios for run in stored):
            raise SystemExit(f"the history holds {[run.scenarios for run in stored]}, not {args.repeat} runs of "
                             f"{args.scenarios}")
        records = [ScenarioRecord.from_dict(row) for row in json.loads(export.read_text())["results"]]
        appends = []
        store = HistoryStore(history)
        for n in range(args.repeat):
            started = time.perf_counter()
            store.append_run(run_id=f"bench-{n}", status="completed", records=records, summary={},
                             started_at=now(), git=GitInfo(), settings={})
            appends.append(time.perf_counter() - started)
        size_mb = history.stat().st_size / 2**20
    print(f"scenarios={args.scenarios} repeats={args.repeat}; history after the runs: {len(stored) + args.repeat} "
          f"runs, {size_mb:.1f} MB")
    for name, runs in (("replay", plain), ("replay+history", with_history)):
        walls, cpus = [r.wall_s for r in runs], [r.cpu_s for r in runs]
        print(f"{name:<15} median wall_s={statistics.median(walls):.2f} (min {min(walls):.2f}, max {max(walls):.2f})"
              f" median cpu_s={statistics.median(cpus):.2f}")
    wall_ratios = [h.wall_s / p.wall_s for p, h in zip(plain, with_history, strict=True)]
    cpu_ratios = [h.cpu_s / p.cpu_s for p, h in zip(plain, with_history, strict=True)]
    print(f"paired ratio with/without history: wall median {statistics.median(wall_ratios):.3f} "
          f"(per pair {', '.join(f'{r:.3f}' for r in wall_ratios)}), cpu median {statistics.median(cpu_ratios):.3f}")
    replay = statistics.median(r.wall_s for r in plain)
    append = statistics.median(appends)
    print(f"append_run of {args.scenarios} records alone: median {append * 1000:.0f} ms = "
          f"{append / replay:.1%} of the median replay ({replay:.2f}s)")


if __name__ == "__main__":
    main()
