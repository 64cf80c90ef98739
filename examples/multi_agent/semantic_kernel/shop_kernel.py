"""A handoff orchestration: a triage agent hands refund requests to a billing agent, which looks the order up with
a plugin function, and delivery questions to a shipping agent.

``make_orchestration`` is the factory the scenario names: pytest-llmsim calls it once per conversation with the
scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``, ``ctx.model``). Without a
``human_response_function`` an invoke ends when an agent answers without handing off: one customer turn.
"""

from __future__ import annotations

from openai import AsyncOpenAI
from semantic_kernel.agents import ChatCompletionAgent, HandoffOrchestration, OrchestrationHandoffs
from semantic_kernel.connectors.ai.open_ai import OpenAIChatCompletion
from semantic_kernel.functions import kernel_function

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


class Orders:
    @kernel_function(description="The order's item, total and delivery state.")
    def lookup_order(self, order_id: str) -> dict[str, str]:
        return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def make_orchestration(ctx):  # type: ignore[no-untyped-def]
    service = OpenAIChatCompletion(ai_model_id=ctx.model,
                                   async_client=AsyncOpenAI(base_url=ctx.base_url, api_key=ctx.api_key or "-"))
    triage = ChatCompletionAgent(service=service, name="Triage", description="Routes the customer.",
                                 instructions="You are TRIAGE_AGENT: send refunds to Billing, deliveries to "
                                              "Shipping.")
    billing = ChatCompletionAgent(service=service, name="Billing", description="Refunds and payments.",
                                  instructions="You are BILLING_AGENT: refunds. Look the order up first.",
                                  plugins=[Orders()])
    shipping = ChatCompletionAgent(service=service, name="Shipping", description="Deliveries and tracking.",
                                   instructions="You are SHIPPING_AGENT: deliveries and tracking.")
    handoffs = (OrchestrationHandoffs()
                .add(triage, billing, "Transfer to Billing for refunds and payments")
                .add(triage, shipping, "Transfer to Shipping for deliveries and tracking"))
    return HandoffOrchestration(members=[triage, billing, shipping], handoffs=handoffs)
