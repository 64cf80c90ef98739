"""A supervisor that hands refund requests to a billing agent (which looks the order up with a function tool)
and delivery questions to a shipping agent, built with langgraph-supervisor and langchain's ``create_agent``.

``make_graph`` is the factory the scenario names: pytest-llmsim calls it once per conversation with the
scenario's agent endpoint (``ctx.base_url``, ``ctx.api_key``, ``ctx.model``). ``output_mode="full_history"``
keeps the workers' tool calls in the graph's messages (the default drops them).
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph_supervisor import create_supervisor

ORDERS = {"1042": {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}}


def lookup_order(order_id: str) -> dict[str, str]:
    """The order's item, total and delivery state."""
    return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def make_graph(ctx):  # type: ignore[no-untyped-def]
    llm = ChatOpenAI(model=ctx.model, base_url=ctx.base_url, api_key=ctx.api_key or "-", use_responses_api=False)
    billing = create_agent(llm, tools=[lookup_order], name="billing",
                           system_prompt="You are BILLING_AGENT: refunds and payments. Look the order up first.")
    shipping = create_agent(llm, tools=[], name="shipping",
                            system_prompt="You are SHIPPING_AGENT: deliveries and tracking.")
    supervisor = create_supervisor([billing, shipping], model=llm, output_mode="full_history",
                                   prompt="You are TRIAGE_AGENT: send refunds to billing, deliveries to shipping.")
    return supervisor.compile(name="supervisor", checkpointer=InMemorySaver())
