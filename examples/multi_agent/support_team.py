"""A support team of three agents: the agent under test of this example (plain Python, no framework).

``Triage`` (the orchestrator) reads the customer's first request and hands the conversation to a specialist:
``Billing`` for refunds and charges, ``Shipping`` for where a parcel is. Each specialist has a function tool
(``issue_refund``, ``track_order``). No LLM: keyword rules, so every run gives the same conversation for the
same customer lines.

Each turn returns the multi-agent shape pytest-llmsim reads: every message with its speaker, the handoffs with
their reason, the tool calls with their arguments and results::

    {"messages": [{"agent": "Triage", "content": "..."},
                  {"agent": "Billing", "content": "...", "tool_calls": [{"name", "arguments", "result"}]}],
     "handoffs": [{"from": "Triage", "to": "Billing", "reason": "refund request"}],
     "end": false}
"""

from __future__ import annotations

import re
from typing import Any

ORDERS = {1042: {"item": "a pair of hiking boots", "total": "59.90 EUR", "state": "a week late, at the Leipzig depot",
                 "eta": "Friday 14 June"},
          1043: {"item": "a rain jacket", "total": "35.00 EUR", "state": "out for delivery", "eta": "today"}}

# What Triage routes where: the first rule whose words appear in the request wins.
ROUTES = [
    ("Billing", "refund request", ("refund", "money back", "charged", "invoice")),
    ("Shipping", "delivery question", ("where is", "track", "delivery", "arrive", "parcel")),
]


def issue_refund(order_id: int) -> dict[str, Any]:
    """The shop's back office (a stand-in): refund an order in full."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"ok": False, "error": "unknown order"}
    return {"ok": True, "refund_id": f"R-{order_id}", "amount": order["total"]}


def track_order(order_id: int) -> dict[str, Any]:
    """The carrier's tracking (a stand-in)."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"ok": False, "error": "unknown order"}
    return {"ok": True, "state": order["state"], "eta": order["eta"]}


class SupportTeam:
    """One instance per conversation (a class is a factory): it remembers who has the customer and the order."""

    def __init__(self, context: Any) -> None:
        self.specialist: str | None = None
        self.order_id: int | None = None
        self.done = False

    def respond(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        text = messages[-1]["content"] if messages else ""
        lower = text.lower()
        number = re.search(r"\b(\d{4})\b", text)
        if number:
            self.order_id = int(number.group(1))
        if "[end_call]" in lower or re.search(r"\b(bye|goodbye)\b", lower):
            return self._say(self.specialist or "Triage", "Thank you for contacting us. Goodbye!", end=True)
        if self.specialist is None:
            return self._triage(lower)
        return self._specialist()

    def _triage(self, request: str) -> dict[str, Any]:
        for agent, reason, words in ROUTES:
            if any(word in request for word in words):
                self.specialist = agent
                reply = self._specialist()
                return {"messages": [{"agent": "Triage", "content": f"Let me hand you to our {agent} team."},
                                     *reply["messages"]],
                        "handoffs": [{"from": "Triage", "to": agent, "reason": reason}]}
        return self._say("Triage", "Hello, this is the Trailhead shop. How can I help you?")

    def _specialist(self) -> dict[str, Any]:
        agent = self.specialist
        assert agent is not None
        if self.done:
            return self._say(agent, "Is there anything else I can help you with?")
        if self.order_id is None:
            return self._say(agent, f"{agent} here. Could you tell me your order number, please?")
        if self.order_id not in ORDERS:
            return self._say(agent, f"I can't find order {self.order_id}. Could you check the number, please?")
        self.done = True
        if agent == "Billing":
            result = issue_refund(self.order_id)
            call = {"name": "issue_refund", "arguments": {"order_id": self.order_id}, "result": result}
            return self._say(agent, f"I have refunded {result['amount']} for order {self.order_id}; you will see "
                                    "it on your card within 3-5 days.", call)
        result = track_order(self.order_id)
        call = {"name": "track_order", "arguments": {"order_id": self.order_id}, "result": result}
        return self._say(agent, f"Order {self.order_id} is {result['state']}; it will arrive on {result['eta']}.",
                         call)

    @staticmethod
    def _say(agent: str, content: str, call: dict[str, Any] | None = None, *, end: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {"agent": agent, "content": content}
        if call is not None:
            message["tool_calls"] = [call]
        return {"messages": [message], "end": end}
