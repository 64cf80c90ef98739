"""An order-tracking support bot served over HTTP with aiohttp: the agent under test of this example.

``POST /chat`` with ``{"session": "...", "message": "..."}`` answers
``{"answer": {"text": "...", "tools": [{"name", "arguments", "result"}], "done": false}}``. It keeps a little state
per session and looks orders up with the ``track_order`` tool. Run it on its own with
``python agent_app.py --port 8765``; the tests start it from conftest.py.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from aiohttp import web

SHIPMENTS = {2077: {"state": "held at the Leipzig depot", "eta": "Friday 14 June"},
             2078: {"state": "delivered", "eta": "Monday 10 June"}}


def track_order(order_id: int) -> dict[str, Any]:
    """The carrier's tracking API (a stand-in)."""
    return SHIPMENTS.get(order_id, {"state": "unknown", "eta": None})


def answer(session: dict[str, Any], message: str) -> dict[str, Any]:
    """One turn of the bot: the reply text, the tools it called, and whether it ends the chat."""
    lower = message.lower()
    if "[end_call]" in lower or re.search(r"\b(bye|goodbye)\b", lower):
        return {"text": "Thanks for contacting Parcelly. Goodbye!", "tools": [], "done": True}
    number = re.search(r"\b(\d{4})\b", message)
    if number is None:
        if session.get("order_id"):
            return {"text": "Is there anything else I can do for you?", "tools": [], "done": False}
        return {"text": "Hello, Parcelly support here. What is your order number?", "tools": [], "done": False}
    order_id = int(number.group(1))
    session["order_id"] = order_id
    status = track_order(order_id)
    call = {"name": "track_order", "arguments": {"order_id": order_id}, "result": status}
    if status["eta"] is None:
        text = f"I can't find order {order_id}. Could you check the number on your confirmation email?"
    else:
        text = f"Sorry for the delay! Order {order_id} is {status['state']} and will arrive on {status['eta']}."
    return {"text": text, "tools": [call], "done": False}


def make_app() -> web.Application:
    sessions: dict[str, dict[str, Any]] = {}

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        session = sessions.setdefault(str(body.get("session")), {})
        return web.json_response({"answer": answer(session, str(body.get("message") or ""))})

    app = web.Application()
    app.router.add_post("/chat", chat)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    web.run_app(make_app(), host="127.0.0.1", port=parser.parse_args().port)
