"""The same suite against each shape of provider rate limit: errors, 429s, throughput.

    python benchmarks/rate_limit_shapes.py                    # 300 x 11 calls, 1200 rpm, time scale 5 (~6 min)
    python benchmarks/rate_limit_shapes.py --shapes sliding --time-scale 1   # the issue's run, in real time
    python benchmarks/rate_limit_shapes.py --shapes bucket,sliding --processes 4   # 4 shard processes, one limit

The workload is the issue's: 300 scenarios of 11 calls each (5 customer, 5 agent turns, 1 verdict), ``-n 2``,
``llmsim_concurrency = 64``, one model limited to 1 200 requests a minute, 0.5 s per reply, ``llmsim_timeout = 90``.
``--time-scale S`` runs it S times faster with the same ratios: the server admits ``1200 * S`` a minute, its
windows last ``60 / S`` s (a per-second window ``1 / S`` s), its replies take ``0.5 / S`` s, the sliding window's
``retry-after`` says ``1 / S`` s, and the plugin's ``llmsim_timeout`` and ``llmsim_rate_limit_wait`` are divided
by S too. So at S = 5 a "minute" is 12 s and the whole workload needs 2.75 such minutes at the limit. What does not
scale is the plugin's CPU per request (S times more requests per second) and whole seconds in headers
(``retry-after`` of the ``retry_after`` shape is whole seconds, as providers send it: S times longer than real).

``--processes N`` runs the suite as N separate pytest processes (a shard each, no shared budget: as N CI
machines), all against the one limit.

Printed per shape, from the server's own log: scenarios scored and errored (from the plugin's JSON exports),
requests answered 429 (share of all requests), and requests admitted per minute of the run's time as a share of
the limit, over the whole run and after the first window (60 / S s). Both count the first window's allowance that
spills over (a bucket starts full, a window admits a whole window's worth at once), so they can pass 100%. For the
bucket, "of the bucket" is the fair figure: the requests admitted after its initial content was first spent, as a
share of what it let through from then on (its content then plus the refill at the limit): 100% wastes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import conversation_script, make_suite, print_machine_reference

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer
from pytest_llmsim.testing.rate_shapes import SHAPES


def limits_for(shape: str, rpm: float, tpm: float | None, scale: float) -> dict[str, Any]:
    """The server's ``limits`` for ``shape`` at time scale ``scale``."""
    limits: dict[str, Any] = {"shape": shape, "rpm": rpm * scale}
    if tpm:
        limits["tpm"] = tpm * scale
    if shape in ("bucket", "retry_after", "bare"):
        limits["burst"] = 60.0 / scale
    elif shape == "per_second":
        limits["window"] = 1.0 / scale
    else:
        limits["window"] = 60.0 / scale
    if shape == "sliding":
        limits["retry_after"] = 1.0 / scale
    return limits


def run_shape(shape: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    scale = args.time_scale
    srv = ScriptedOpenAIServer(conversation_script(args.agent_turns), latency=args.latency / scale,
                               limits=limits_for(shape, args.rpm, args.tpm, scale), log_requests=False)
    srv.start()
    started = time.perf_counter()
    try:
        roots = [make_suite(tmp / f"{shape}-{index}", 0) for index in range(args.processes)]
        for number in range(args.scenarios):  # shard k of N: scenarios k, k + N, ...
            scenarios = roots[number % args.processes] / "scenarios" / "bench.json"
            data = json.loads(scenarios.read_text())
            data.append({"name": f"s{number:05d}", "variables": {"CITY": f"city{number}", "SEED": number}})
            scenarios.write_text(json.dumps(data))
        procs = []
        for root in roots:
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                       f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all", "-n", str(args.workers),
                       f"--llmsim-concurrency={args.concurrency}", f"--llmsim-timeout={args.timeout / scale:g}",
                       f"--llmsim-rate-limit-wait={args.rate_limit_wait / scale:g}",
                       f"--llmsim-results={root / 'out.json'}"]
            env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
            procs.append(subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, env=env))
        outputs = [proc.communicate()[0] for proc in procs]
        wall = time.perf_counter() - started
        stats, admitted = srv.stats(), srv.admitted_log()
    finally:
        srv.stop()
    scored = errored = 0
    errors: list[str] = []
    for root, output in zip(roots, outputs, strict=True):
        export = root / "out.json"
        if not export.exists():
            errors.append(f"no export; pytest said: {output[-2000:]}")
            continue
        data = json.loads(export.read_text())
        for result in data.get("results", []):
            if result.get("status") == "error":
                errored += 1
                errors.append(str(result.get("error_message", ""))[:300])
            elif result.get("score") is not None:
                scored += 1
    requests = stats["requests"]
    rejected = stats["status_counts"].get("429", 0)
    window = 60.0 / scale
    return {"shape": shape, "wall_s": wall, "scored": scored, "errored": errored, "errors": errors[:3],
            "requests": requests, "rejected": rejected,
            "share_429": rejected / max(1, requests),
            "whole": _share(admitted, 0.0, args.rpm * scale),
            "after_first": _share(admitted, window, args.rpm * scale),
            "bucket": _bucket_share(admitted, args.rpm * scale, args.rpm) if shape == "bucket" else None}


def _share(admitted: list[tuple[float, str, float]], skip: float, rpm: float) -> float | None:
    """Requests admitted per minute from ``skip`` seconds after the first admitted request to the last, as a
    share of ``rpm`` (None: too short to tell)."""
    if not admitted:
        return None
    start = admitted[0][0] + skip
    later = [moment for moment, _, _ in admitted if moment >= start]
    span = later[-1] - start if later else 0.0
    if span <= 0.5:
        return None
    return len(later) / span * 60.0 / rpm


def _bucket_share(admitted: list[tuple[float, str, float]], rpm: float, capacity: float) -> float | None:
    """For a bucket (refilled at ``rpm``, holding ``capacity``): the requests admitted once its initial content
    was spent (the first moment it held less than 5% of its capacity: the limiter keeps a round trip's worth in
    reserve, so it never quite empties), as a share of what it let through from then on (what it held then plus
    the refill until the last admitted request). 100%: the run used every request the limit allowed; the initial
    minute's allowance, which a long run does not have, is left out."""
    if not admitted:
        return None
    rate = rpm / 60.0
    level, stamp = capacity, admitted[0][0]
    for index, (moment, _, _) in enumerate(admitted):
        level = min(capacity, level + (moment - stamp) * rate) - 1.0
        stamp = moment
        if level < max(1.0, 0.05 * capacity):
            rest = admitted[index + 1:]
            if not rest or rest[-1][0] - moment <= 0.5:
                return None
            return len(rest) / (max(0.0, level) + rate * (rest[-1][0] - moment))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--agent-turns", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="xdist workers per process")
    parser.add_argument("--processes", type=int, default=1, help="separate pytest processes (shards), one limit")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rpm", type=float, default=1200)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=90.0, help="llmsim_timeout in the run's time")
    parser.add_argument("--rate-limit-wait", type=float, default=600.0, help="llmsim_rate_limit_wait, run's time")
    parser.add_argument("--time-scale", type=float, default=5.0)
    args = parser.parse_args()
    print_machine_reference()
    print(f"{args.scenarios} scenarios x {2 * args.agent_turns + 1} calls, {args.processes} process(es) x -n "
          f"{args.workers}, concurrency {args.concurrency}, {args.rpm:g} rpm"
          f"{f' / {args.tpm:g} tpm' if args.tpm else ''}, latency {args.latency:g} s, timeout {args.timeout:g} s, "
          f"time scale {args.time_scale:g} (a minute lasts {60 / args.time_scale:g} s)")
    print(f"{'shape':<12} {'scored':>6} {'errors':>6} {'requests':>8} {'429s':>6} {'429 %':>7} "
          f"{'whole run':>9} {'after 1st window':>16} {'of the bucket':>13} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            fig = run_shape(shape.strip(), args, Path(tmp))
            whole = "-" if fig["whole"] is None else f"{fig['whole']:.1%}"
            after = "-" if fig["after_first"] is None else f"{fig['after_first']:.1%}"
            bucket = "-" if fig["bucket"] is None else f"{fig['bucket']:.1%}"
            print(f"{fig['shape']:<12} {fig['scored']:>6} {fig['errored']:>6} {fig['requests']:>8} "
                  f"{fig['rejected']:>6} {fig['share_429']:>7.2%} {whole:>9} {after:>16} {bucket:>13} "
                  f"{fig['wall_s']:>7.1f}", flush=True)
            for error in fig["errors"]:
                print(f"    error: {error}")


if __name__ == "__main__":
    main()
