"""A rule-based support bot of an online shop: the agent under test of this example.

No LLM: it answers by keyword rules, so every run gives the same conversation for the same customer lines.
A refund goes through the ``issue_refund`` tool; the tool call and its result are part of the conversation,
and the judge sees them as ``[tool issue_refund({"order_id": 1042}) -> {"ok": true, ...}]``.
"""

from __future__ import annotations

import re
from typing import Any

ORDERS = {1042: {"item": "a pair of hiking boots", "total": "59.90 EUR", "status": "a week late"},
          1043: {"item": "a rain jacket", "total": "35.00 EUR", "status": "delivered"}}


def issue_refund(order_id: int) -> dict[str, Any]:
    """The shop's back office (a stand-in): refund an order in full."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"ok": False, "error": "unknown order"}
    return {"ok": True, "refund_id": f"R-{order_id}", "amount": order["total"]}


class ShopBot:
    """One instance per conversation (a class is a factory), so it remembers the order being discussed."""

    def __init__(self, context: Any) -> None:
        self.order_id: int | None = None
        self.wants_refund = False
        self.refunded = False

    def respond(self, messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        text = messages[-1]["content"] if messages else ""
        lower = text.lower()
        number = re.search(r"\b(\d{4})\b", text)
        if number:
            self.order_id = int(number.group(1))
        if "[end_call]" in lower or re.search(r"\b(bye|goodbye)\b", lower):
            return {"content": "Thank you for shopping with us. Goodbye!", "end": True}
        if self.refunded:
            return "Is there anything else I can help you with?"
        if any(word in lower for word in ("refund", "money back", "late")):
            self.wants_refund = True
        if self.wants_refund:
            if self.order_id is None:
                return "I'm sorry to hear that. Could you tell me your order number, please?"
            if self.order_id not in ORDERS:
                return f"I can't find order {self.order_id}. Could you check the number, please?"
            return self._refund()
        if self.order_id is not None and self.order_id in ORDERS:
            order = ORDERS[self.order_id]
            return f"Order {self.order_id} ({order['item']}) is {order['status']}. Would you like a refund?"
        return "Hello, this is the Trailhead shop. How can I help you?"

    def _refund(self) -> dict[str, Any]:
        assert self.order_id is not None
        result = issue_refund(self.order_id)
        self.refunded = True
        return {"content": f"I have refunded {result['amount']} for order {self.order_id}; you will see it on "
                           "your card within 3-5 days.",
                "tool_calls": [{"name": "issue_refund", "arguments": {"order_id": self.order_id}, "result": result}]}
