"""A triage agent that delegates refund requests to a billing agent and delivery questions to a shipping agent,
each through a tool (pydantic-ai's multi-agent pattern); the billing agent looks the order up with its own
function tool.

``make_triage`` is the factory the scenario names: pytest-llmsim calls it once per conversation with the
scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``, ``ctx.model``).
"""

from __future__ import annotations

from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


def make_triage(ctx):  # type: ignore[no-untyped-def]
    model = OpenAIChatModel(ctx.model, provider=OpenAIProvider(base_url=ctx.base_url, api_key=ctx.api_key or "-"))
    billing = Agent(model, name="Billing",
                    instructions="You are BILLING_AGENT: refunds and payments. Look the order up first.")

    @billing.tool_plain
    def lookup_order(order_id: str) -> dict[str, str]:
        """The order's item, total and delivery state."""
        return ORDERS.get(order_id, {"error": f"no order {order_id}"})

    shipping = Agent(model, name="Shipping", instructions="You are SHIPPING_AGENT: deliveries and tracking.")
    triage = Agent(model, name="Triage",
                   instructions="You are TRIAGE_AGENT: hand refund questions to billing with transfer_to_billing, "
                                "delivery questions to shipping with transfer_to_shipping.")

    @triage.tool
    async def transfer_to_billing(run: RunContext[None], request: str) -> str:
        """Let the billing agent answer a refund or payment request."""
        answer = await billing.run(request, usage=run.usage)
        return answer.output

    @triage.tool
    async def transfer_to_shipping(run: RunContext[None], request: str) -> str:
        """Let the shipping agent answer a delivery or tracking question."""
        answer = await shipping.run(request, usage=run.usage)
        return answer.output

    return triage
