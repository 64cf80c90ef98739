"""``pytest --llmsim-init``: a minimal working project, written without overwriting anything.

It writes a scenario file that uses only ``persona``/``goal``/``criteria`` (no templates: the package's generic
customer and judge prompts serve it), a small rule-based Python agent to test, and nothing else: the defaults
(``llmsim_paths = scenarios``, the local model when no endpoint is configured) need no ini file. Right after
it, ``pytest`` runs the example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIO_FILE = """\
# pytest-llmsim scenarios: each scenario below is one pytest item (pytest -v shows their ids).
# The customer is simulated from `persona` and `goal`; the judge scores the agent 1-3 against `criteria`.
defaults:
  agent: {python: "support_agent:reply"}   # the agent under test: function reply() in support_agent.py
  max_turns: 8                             # messages from both sides before the call is cut
  min_score: 2                             # the item fails below this score

scenarios:
  - name: late_parcel_refund
    persona: a polite customer whose parcel is a week late
    goal: get a refund for the late parcel (order number 1042)
    criteria:
      - asks for the order number, or uses the one the customer gave
      - offers a refund or a voucher
      - does not promise a delivery date it cannot keep

  - name: change_delivery_address
    persona: a busy customer who has moved house
    goal: change the delivery address of order 2077 to 12 Elm Street
    criteria:
      - confirms the new address back to the customer
      - says when the change takes effect
"""

AGENT_FILE = '''\
"""The agent under test: a small rule-based support bot (replace it with yours).

pytest-llmsim calls ``reply(messages, context)`` once per agent turn. ``messages`` is the conversation so far
as OpenAI-style messages from the agent's point of view (the customer's lines are "user" messages); ``context``
has the scenario's name, variables and seed. Return the reply text, or a dict with "content", optional
"tool_calls" ([{"name", "arguments", "result"}]) and "end": True to end the call.
"""

import re


def reply(messages, context):
    said = " ".join(m["content"] or "" for m in messages if m["role"] == "user").lower()
    if not said:
        return "Hello, this is Parcel Support. How can I help you today?"
    order = re.search(r"\\b(\\d{3,})\\b", said)
    if not order:
        return "I am sorry to hear that. Could you give me your order number, please?"
    if "address" in said or "moved" in said or "street" in said:
        return {
            "content": f"I have changed the delivery address of order {order.group(1)}. "
                       "The change applies to the next delivery attempt, tomorrow. Anything else?",
            "tool_calls": [{"name": "change_address", "arguments": {"order": order.group(1)},
                            "result": {"ok": True}}],
        }
    if any(word in said for word in ("bye", "thank")):
        return {"content": "You are welcome. Goodbye!", "end": True}
    return {
        "content": f"I have issued a full refund for order {order.group(1)}; it reaches your account in "
                   "3-5 business days. Is there anything else I can do?",
        "tool_calls": [{"name": "issue_refund", "arguments": {"order": order.group(1)}, "result": {"ok": True}}],
    }
'''


@dataclass(frozen=True)
class StarterFile:
    path: str
    text: str


FILES = (StarterFile("scenarios/example.yaml", SCENARIO_FILE), StarterFile("support_agent.py", AGENT_FILE))


def write_starter(root: Path) -> tuple[list[Path], list[Path]]:
    """Write the starter files under ``root``; return (written, skipped because they exist). Never overwrites."""
    written: list[Path] = []
    skipped: list[Path] = []
    for item in FILES:
        target = root / item.path
        if target.exists():
            skipped.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x", encoding="utf-8") as handle:  # "x": never replace a file that appeared meanwhile
            handle.write(item.text)
        written.append(target)
    return written, skipped


def starter_lines(root: Path, written: list[Path], skipped: list[Path]) -> list[str]:
    """What ``--llmsim-init`` prints: what it wrote, what it left alone, and the next command."""
    lines = [f"llmsim: wrote {path.relative_to(root)}" for path in written]
    lines += [f"llmsim: kept {path.relative_to(root)} (it exists; nothing was overwritten)" for path in skipped]
    lines += [
        "",
        "Next: run the example scenarios (the bundled local model plays the customer and the judge when no",
        "endpoint is configured; set OPENAI_API_KEY or --llmsim-base-url for a real model):",
        "",
        "    pytest -v",
        "",
        "Then point `agent:` in scenarios/example.yaml at your own agent (python, http or openai; see the README).",
    ]
    return lines
