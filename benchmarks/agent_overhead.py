"""Plugin CPU per conversation with a python agent that answers instantly, against today's prompt agent.

    python benchmarks/agent_overhead.py --scenarios 200 --repeat 3

Both suites run the same conversations (the customer and the judge on a zero-latency scripted server, every
call live: ``--llmsim-record=all``): with the prompt agent every agent turn is an LLM call; with the python
agent (``llmsim_agent = {python: "bots.fast:reply"}``) it is a function call, so a conversation makes
``agent_turns`` fewer LLM calls. CPU is the pytest process's (kernel child accounting, see ``_harness``), less a
``--collect-only`` run as the start-up baseline; the runs alternate and the medians are printed.

The figures: CPU per conversation and per LLM call of each suite, and what one python agent turn costs (the
python suite's CPU per conversation, less its LLM calls at the prompt suite's per-call figure, divided by the
agent turns). The target: the python suite's per-call figure within 10% of the prompt suite's.

The ``team`` suite is the same python agent as a multi-agent system: every turn three speakers' messages
(``Triage``, ``Billing``, ``Refunds``, one of them with a tool call) and two handoffs. Its CPU per conversation
against the single-speaker python suite's is the multi-agent overhead (target <= 1.2x). ``--suites`` picks the
suites (default: all three).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _harness import conversation_script, make_suite, print_machine_reference, run_pytest, server

_BOT = '''
def reply(messages, context):
    turn = sum(1 for m in messages if m["role"] == "assistant")
    return "Confirmed, goodbye [END_CALL]" if turn == {last} else f"Agent line {{turn}}"
'''


_TEAM_BOT = '''
def reply(messages, context):
    turn = sum(1 for m in messages if m["role"] == "user")
    last = "Confirmed, goodbye [END_CALL]" if turn == {last} + 1 else f"Refunds line {{turn}}"
    return {{"messages": [
        {{"agent": "Triage", "content": f"Triage line {{turn}}"}},
        {{"agent": "Billing", "content": f"Billing line {{turn}}",
          "tool_calls": [{{"name": "lookup", "arguments": {{"turn": turn}}, "result": {{"ok": True}}}}]}},
        {{"agent": "Refunds", "content": last}}],
        "handoffs": [{{"from": "Triage", "to": "Billing", "reason": "billing"}},
                     {{"from": "Billing", "to": "Refunds"}}]}}
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agent-turns", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--suites", default="prompt,python,team",
                        help="comma-separated: prompt, python (one speaker), team (three speakers a turn)")
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.suites.split(",") if kind.strip()]
    print_machine_reference()
    srv = server(conversation_script(args.agent_turns), 0.0)
    figures: dict[str, list[tuple[float, int]]] = {kind: [] for kind in kinds}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            roots = {kind: make_suite(Path(tmp) / kind, args.scenarios) for kind in figures}
            for kind, source in (("python", _BOT), ("team", _TEAM_BOT)):
                if kind not in roots:
                    continue
                bots = roots[kind] / "bots"
                bots.mkdir()
                (bots / "__init__.py").write_text("")
                (bots / "fast.py").write_text(source.format(last=args.agent_turns - 1))
                ini = roots[kind] / "pytest.ini"
                ini.write_text(ini.read_text() + 'llmsim_agent = {python: "bots.fast:reply"}\n')
            common = (f"--llmsim-base-url={srv.base_url}", "--llmsim-record=all",
                      f"--llmsim-concurrency={args.concurrency}")
            baselines = {kind: run_pytest(root, "--collect-only", f"--llmsim-base-url={srv.base_url}").cpu_s
                         for kind, root in roots.items()}
            for _ in range(args.repeat):
                for kind, root in roots.items():
                    srv.reset()
                    run = run_pytest(root, *common)
                    if run.exit_code != 0:
                        raise SystemExit(f"{kind} suite failed (exit {run.exit_code}):\n{run.tail}")
                    figures[kind].append((run.cpu_s - baselines[kind], srv.stats()["requests"]))
                    print(f"{kind}: cpu_s={run.cpu_s:.2f} (start-up {baselines[kind]:.2f}) calls="
                          f"{srv.stats()['requests']} wall_s={run.wall_s:.2f}")
    finally:
        srv.stop()
    per_call = {kind: statistics.median(1000 * cpu / calls for cpu, calls in runs) for kind, runs in figures.items()}
    per_conv = {kind: statistics.median(1000 * cpu / args.scenarios for cpu, _ in runs)
                for kind, runs in figures.items()}
    calls_per_conv = {kind: runs[0][1] / args.scenarios for kind, runs in figures.items()}
    for kind in figures:
        print(f"{kind} agent: {per_conv[kind]:.2f} ms CPU per conversation ({calls_per_conv[kind]:.0f} LLM calls), "
              f"{per_call[kind]:.3f} ms per LLM call (medians of {args.repeat}, start-up excluded)")
    if "prompt" in figures and "python" in figures:
        agent_turn_ms = (per_conv["python"] - calls_per_conv["python"] * per_call["prompt"]) / args.agent_turns
        print(f"python agent per LLM call vs prompt agent: {per_call['python'] / per_call['prompt']:.3f}x "
              f"(target <= 1.10); one python agent turn costs {agent_turn_ms:.3f} ms CPU "
              f"(a prompt agent turn: {per_call['prompt']:.3f} ms)")
    if "python" in figures and "team" in figures:
        ratios = [team[0] / single[0] for team, single in zip(figures["team"], figures["python"], strict=True)]
        print(f"3-speaker python agent vs single-speaker: {per_conv['team'] / per_conv['python']:.3f}x CPU per "
              f"conversation (medians; paired runs {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.20)")


if __name__ == "__main__":
    main()
