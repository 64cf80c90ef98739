"""Starts the agent service (agent_app.py) on 127.0.0.1 for the length of the test run.

Scenario items are not Python test functions, so a hook starts the service rather than a fixture: once, in the
process that runs pytest (under ``pytest -n`` the xdist workers call the controller's service), in a background
thread with its own event loop, stopped when the run ends.

The port is fixed because a scenario's ``agent.http.url`` is written literally in scenarios/*.yaml (only header
values read ``${VARIABLES}``): keep PORT and the URL there in step. Port 8765 busy? Change both.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from agent_app import make_app
from aiohttp import web

PORT = 8765


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
                                    "change PORT in conftest.py and the url in scenarios/*.yaml") from None

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        self.loop.close()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller serves the agent
        return
    service = AgentService(PORT)
    service.start()
    config.add_cleanup(service.stop)
