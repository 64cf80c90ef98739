"""Starts the agent service (agent_app.py) on 127.0.0.1 for the length of the test run.

Scenario items are not Python test functions, so a hook starts the service rather than a fixture: once, in the
process that runs pytest (under ``pytest -n`` the xdist workers call the controller's service), in a background
thread with its own event loop, stopped when the run ends.

The service listens on a free port (or on ``$SHOP_AGENT_PORT`` when it is set) and says which in the environment
variable ``SHOP_AGENT_PORT``, which the scenarios' ``agent.http.url`` reads (``${SHOP_AGENT_PORT}``); xdist workers,
started after this hook, inherit it.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from agent_app import make_app
from aiohttp import web

PORT_VARIABLE = "SHOP_AGENT_PORT"


class AgentService:
    """``make_app()`` served on 127.0.0.1:``port`` from a daemon thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app())
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-service", daemon=True)

    def start(self) -> None:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        try:
            started.result(timeout=30)
        except OSError as exc:
            self.stop()
            raise pytest.UsageError(f"cannot start the agent service on 127.0.0.1:{self.port} ({exc}); "
                                    f"unset {PORT_VARIABLE} to use a free port") from None

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port bound (a free one when asked for 0)

    def stop(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        self.loop.close()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller serves the agent
        return
    service = AgentService(int(os.environ.get(PORT_VARIABLE) or 0))
    service.start()
    os.environ[PORT_VARIABLE] = str(service.port)  # where the scenarios' url finds it
    config.add_cleanup(service.stop)
