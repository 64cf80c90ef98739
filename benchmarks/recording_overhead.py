"""What writing the recording files costs a live run: the same suite recorded with and without them.

    python benchmarks/recording_overhead.py --scenarios 200 --repeat 5

Against a zero-latency loopback server (the worst case: nothing hides the writes), times, alternating,
``--llmsim-record=all`` runs that write every recording afresh (the recordings directory is deleted before each)
and the same runs with ``--llmsim-recordings=off``; prints the medians of wall and CPU time and their ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, print_machine_reference, run_pytest, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print_machine_reference()
    with tempfile.TemporaryDirectory() as tmp:
        suite = make_suite(Path(tmp) / "suite", args.scenarios)
        srv = server(conversation_script(5), 0.0)
        url = srv.base_url
        run_pytest(suite, f"--llmsim-base-url={url}")  # warm-up: imports compiled, server warm
        on, off = [], []
        for _ in range(args.repeat):
            shutil.rmtree(suite / "recordings", ignore_errors=True)
            on.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=all"))
            written = sum(1 for p in (suite / "recordings").rglob("*.json") if p.is_file())
            assert written == args.scenarios, on[-1].tail
            off.append(run_pytest(suite, f"--llmsim-base-url={url}", "--llmsim-record=all",
                                  "--llmsim-recordings=off"))
        srv.stop()
        print(on[-1].tail)
    for name, runs in (("recordings on ", on), ("recordings off", off)):
        print(f"{name}: median wall_s={statistics.median(r.wall_s for r in runs):.2f} "
              f"cpu_s={statistics.median(r.cpu_s for r in runs):.2f} exit codes={[r.exit_code for r in runs]}")
    wall = statistics.median(a.wall_s / b.wall_s for a, b in zip(on, off, strict=True))
    cpu = statistics.median(a.cpu_s / b.cpu_s for a, b in zip(on, off, strict=True))
    print(f"ratio on/off (median of pairs): wall={wall:.3f} cpu={cpu:.3f}")


if __name__ == "__main__":
    main()
