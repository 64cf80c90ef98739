"""A swarm: a triage agent hands refund requests to a billing agent, which looks the order up with a function
tool and hands the customer back to the user when it has answered.

``make_team`` is the factory the scenario names: pytest-llmsim calls it once per conversation (an AutoGen team
keeps its history between runs) with the scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``,
``ctx.model``).
"""

from __future__ import annotations

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import HandoffTermination, MaxMessageTermination
from autogen_agentchat.teams import Swarm
from autogen_core.models import ModelFamily
from autogen_ext.models.openai import OpenAIChatCompletionClient

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


def lookup_order(order_id: str) -> dict[str, str]:
    """The order's item, total and delivery state."""
    return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def make_team(ctx):  # type: ignore[no-untyped-def]
    client = OpenAIChatCompletionClient(
        model=ctx.model, base_url=ctx.base_url, api_key=ctx.api_key or "-",
        model_info={"vision": False, "function_calling": True, "json_output": False,
                    "family": ModelFamily.UNKNOWN, "structured_output": False})
    triage = AssistantAgent("Triage", model_client=client, handoffs=["Billing", "Shipping"],
                            system_message="You are TRIAGE_AGENT: send refunds to Billing, deliveries to Shipping.")
    billing = AssistantAgent("Billing", model_client=client, tools=[lookup_order], handoffs=["user"],
                             reflect_on_tool_use=True,
                             system_message="You are BILLING_AGENT: refunds. Look the order up, answer, then "
                                            "hand off to the user.")
    shipping = AssistantAgent("Shipping", model_client=client, handoffs=["user"],
                              system_message="You are SHIPPING_AGENT: deliveries. Answer, then hand off to the user.")
    return Swarm([triage, billing, shipping],
                 termination_condition=HandoffTermination(target="user") | MaxMessageTermination(20))
