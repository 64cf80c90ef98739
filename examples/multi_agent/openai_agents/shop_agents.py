"""A triage agent that hands refund requests to a billing agent, which looks the order up with a function tool.

``make_triage`` is the factory the scenario names: pytest-llmsim calls it once per conversation with the
scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``, ``ctx.model``), so the agents talk to the model
the run is configured with. Your own code would build its model the same way, or name a ready-made ``Agent``.
"""

from __future__ import annotations

from agents import Agent, OpenAIChatCompletionsModel, function_tool
from openai import AsyncOpenAI

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


@function_tool
def lookup_order(order_id: str) -> dict[str, str]:
    """The order's item, total and delivery state."""
    return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def make_triage(ctx):  # type: ignore[no-untyped-def]
    model = OpenAIChatCompletionsModel(model=ctx.model,
                                       openai_client=AsyncOpenAI(base_url=ctx.base_url, api_key=ctx.api_key or "-"))
    billing = Agent(name="Billing", model=model, tools=[lookup_order],
                    instructions="You are BILLING_AGENT: refunds and payments. Look the order up before refunding.")
    shipping = Agent(name="Shipping", model=model,
                     instructions="You are SHIPPING_AGENT: deliveries and tracking.")
    return Agent(name="Triage", model=model, handoffs=[billing, shipping],
                 instructions="You are TRIAGE_AGENT: send refund questions to Billing, delivery ones to Shipping.")
