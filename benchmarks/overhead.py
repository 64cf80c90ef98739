"""Plugin CPU cost per LLM call against a zero-latency loopback server.

    python benchmarks/overhead.py --scenarios 200 --concurrency 16

CPU time is the pytest process's user+sys (kernel child accounting); the server runs in this process, so its
CPU is not counted. A ``--collect-only`` run of the same suite is subtracted as the start-up baseline.

For scale it also times the floor: the bare ``openai`` async client (no plugin, no cache, no pytest) making
as many calls with the same concurrency, posting plain JSON bodies and reading plain JSON replies as the
plugin does. What the plugin adds per call is the difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, print_machine_reference, run_measured, run_pytest, server

from pytest_llmsim.model.settings import resolve_http_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agent-turns", type=int, default=5)
    args = parser.parse_args()
    print_machine_reference()
    srv = server(conversation_script(args.agent_turns), 0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_suite(Path(tmp) / "suite", args.scenarios)
            base = run_pytest(root, "--collect-only", f"--llmsim-base-url={srv.base_url}")
            fig = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all",
                             f"--llmsim-concurrency={args.concurrency}")
            calls = srv.stats()["requests"]
            print(fig.tail)
            base_ms, floor_ms = _bare_client_ms(Path(tmp), srv.base_url, calls, args.concurrency)
    finally:
        srv.stop()
    per_call_ms = 1000 * fig.cpu_s / calls
    net_ms = 1000 * (fig.cpu_s - base.cpu_s) / calls
    print(f"scenarios={args.scenarios} calls={calls} wall_s={fig.wall_s:.2f} cpu_s={fig.cpu_s:.2f} "
          f"startup_cpu_s={base.cpu_s:.2f} rss_mb={fig.peak_rss_mb:.1f} exit={fig.exit_code}")
    print(f"bare openai client ({resolve_http_backend('auto')} transport): {floor_ms - base_ms:.3f} ms CPU per call "
          f"excluding its import "
          f"({floor_ms:.3f} ms including it)")
    print(f"plugin CPU per LLM call: {per_call_ms:.3f} ms total, {net_ms:.3f} ms excluding start-up/collection; "
          f"{net_ms - (floor_ms - base_ms):.3f} ms above the bare openai client")


_BARE_CLIENT = """
import asyncio, sys
import openai

async def main(base_url, calls, concurrency):
    transport = {"http_client": openai.DefaultAioHttpClient()} if sys.argv[4] == "aiohttp" else {}
    api = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, **transport)
    gate = asyncio.Semaphore(concurrency)
    system = {"role": "system", "content": "AGENT s00001 city1. End with [END_CALL]."}

    async def one(i):
        async with gate:
            turns = [{"role": "user" if k % 2 == 0 else "assistant", "content": f"Customer line {k}"}
                     for k in range(i % 10 + 1)]
            body = {"model": "gpt-4o-mini", "messages": [system, *turns], "temperature": 0.3,
                    "max_tokens": 300, "seed": i}
            await api.post("/chat/completions", body=body, cast_to=object)

    await asyncio.gather(*(one(i) for i in range(calls)))
    await api.close()

if sys.argv[2] != "0":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def _bare_client_ms(tmp: Path, base_url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """CPU ms per call of the bare client: (import only, import + calls), each divided by ``calls``."""
    script = [sys.executable, "-c", _BARE_CLIENT, base_url]
    transport = resolve_http_backend("auto")  # the transport the plugin uses by default
    imported = run_measured(tmp, [*script, "0", str(concurrency), transport])
    full = run_measured(tmp, [*script, str(calls), str(concurrency), transport])
    return 1000 * imported.cpu_s / calls, 1000 * full.cpu_s / calls


if __name__ == "__main__":
    main()
