"""Throughput at a provider's rate limits: the loopback server enforces requests and tokens per minute.

    python benchmarks/rate_limits.py                      # the target: 1000 x 11 calls, 600 rpm / 150k tpm (~20 min)
    python benchmarks/rate_limits.py --time-scale 10      # the same run 10x faster (6000 rpm / 1.5M tpm, 50 ms)

The server limits each model as OpenAI does (``testing/openai_server.py``, ``limits``): a bucket of requests and
one of tokens refilled at the per-minute limit and holding ``--burst`` seconds of it (default 60, a full minute,
as OpenAI); a request costs 1 and its prompt tokens plus ``max_tokens`` (300 agent and judge, 150 customer), so
the tokens bind first here. ``--time-scale S`` multiplies the limits by S and divides the latency and the burst
by S: the same run, S times faster, with the same ratios. The plugin runs with ``-n WORKERS`` at
``llmsim_concurrency = CONCURRENCY`` and no ``--llmsim-rpm``/``--llmsim-tpm``: it paces from the headers alone.

Printed, from the server's own log: requests and tokens admitted per minute (in the run's time, i.e. divided by
S) over the whole run and after the first burst window (the bucket's initial content is a bonus a long run does
not have), each as a share of its limit; the binding limit is the one with the larger share; the share of
requests answered 429; errors; and the plugin's own summary figures (from its JSON export).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, print_machine_reference, run_pytest

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--tpm", type=float, default=150_000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--burst", type=float, default=60.0, help="seconds of the limit the server's bucket holds")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--agent-turns", type=int, default=5)
    args = parser.parse_args()
    scale = args.time_scale
    print_machine_reference()
    limits = {"rpm": args.rpm * scale, "tpm": args.tpm * scale, "burst": args.burst / scale}
    srv = ScriptedOpenAIServer(conversation_script(args.agent_turns), latency=args.latency / scale, limits=limits,
                               log_requests=False)
    srv.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_suite(Path(tmp) / "suite", args.scenarios)
            export = Path(tmp) / "out.json"
            fig = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all", "-n",
                             str(args.workers), f"--llmsim-concurrency={args.concurrency}",
                             f"--llmsim-results={export}")
            summary = json.loads(export.read_text())["summary"] if export.exists() else {}
            stats, admitted = srv.stats(), srv.admitted_log()
    finally:
        srv.stop()
    print(fig.tail)
    requests = stats["requests"]
    rejected = stats["status_counts"].get("429", 0)
    print(f"scenarios={args.scenarios} workers={args.workers} concurrency={args.concurrency} limits {args.rpm:g} rpm "
          f"/ {args.tpm:g} tpm, burst {args.burst:g} s, latency {args.latency:g} s, time scale {scale:g}: "
          f"wall {fig.wall_s:.1f} s (x{scale:g} = {fig.wall_s * scale / 60:.1f} min in the run's time), "
          f"exit {fig.exit_code}")
    print(f"requests {requests}, completed {stats['completed']}, answered 429: {rejected} "
          f"({rejected / max(1, requests):.2%}; {stats['limits']['rate_limited']}), errors: "
          f"{summary.get('errored_scenarios', '?')} of {summary.get('total_scenarios', '?')} scenarios")
    for label, skip in (("whole run", 0.0), (f"after the first {args.burst:g} s", args.burst / scale)):
        rates = _rates(admitted, skip, scale)
        if rates is None:
            print(f"{label}: too short to measure")
            continue
        rpm, tpm = rates
        share_r, share_t = rpm / args.rpm, tpm / args.tpm
        binding = "tokens" if share_t >= share_r else "requests"
        print(f"{label}: {rpm:.1f} requests/min ({share_r:.1%} of the limit), {tpm:.0f} tokens/min "
              f"({share_t:.1%}); binding: {binding} at {max(share_r, share_t):.1%}")
    if summary:
        print(f"plugin summary (run's clock, not scaled): {summary.get('rate_limited_requests')} answered 429, "
              f"{summary.get('limiter_wait_seconds')} s waiting for the limiter (all workers), "
              f"{summary.get('effective_rpm')} requests/min, {summary.get('reserved_tpm')} tokens/min reserved, "
              f"{summary.get('effective_tpm')} tokens/min used")


def _rates(admitted: list[tuple[float, str, float]], skip: float, scale: float) -> tuple[float, float] | None:
    """Requests and tokens per minute of the run's time (the server's clock divided by ``scale``), from ``skip``
    seconds after the first admitted request to the last."""
    if not admitted:
        return None
    start = admitted[0][0] + skip
    window = [(moment, tokens) for moment, _, tokens in admitted if moment >= start]
    span = (window[-1][0] - start) if window else 0.0
    if span <= 1.0:
        return None
    minutes = span * scale / 60
    return len(window) / minutes, sum(tokens for _, tokens in window) / minutes


if __name__ == "__main__":
    main()
