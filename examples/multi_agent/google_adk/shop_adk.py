"""A triage agent with two sub-agents: ADK's ``transfer_to_agent`` hands refund requests to billing, which looks
the order up with a function tool, and delivery questions to shipping.

``make_triage`` is the factory the scenario names: pytest-llmsim calls it once per conversation with the
scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``, ``ctx.model``), for ADK's native OpenAI model.
"""

from __future__ import annotations

from google.adk.agents import LlmAgent
from google.adk.integrations.openai import OpenAILlm

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


def lookup_order(order_id: str) -> dict[str, str]:
    """The order's item, total and delivery state."""
    return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def make_triage(ctx):  # type: ignore[no-untyped-def]
    model = OpenAILlm(model=ctx.model, base_url=ctx.base_url, api_key=ctx.api_key or "-")
    billing = LlmAgent(name="Billing", model=model, tools=[lookup_order], description="Refunds and payments.",
                       instruction="You are BILLING_AGENT: refunds. Look the order up first.")
    shipping = LlmAgent(name="Shipping", model=model, description="Deliveries and tracking.",
                        instruction="You are SHIPPING_AGENT: deliveries and tracking.")
    return LlmAgent(name="Triage", model=model, sub_agents=[billing, shipping], description="Routes the customer.",
                    instruction="You are TRIAGE_AGENT: send refunds to Billing, deliveries to Shipping.")
