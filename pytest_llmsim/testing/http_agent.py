"""A small HTTP "agent under test" on 127.0.0.1, for tests of ``agent: {http: ...}`` over real HTTP.

Each POST is answered by ``respond(body, headers, n)`` (``n``: 1 for the first request), which returns
``(status, payload)``, ``(status, payload, delay_seconds)`` or ``(status, payload, delay_seconds, headers)``
(extra response headers, e.g. a redirect's ``Location``); a payload that is not bytes is sent as JSON.
The default agent answers ``{"reply": {"text": "Agent turn <k> for <session>"}}`` and ends the call (the end
marker) on the third turn of a session. ``requests`` logs ``{"body", "headers" (lowercase), "path"}`` in arrival
order.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Responder = Callable[[dict[str, Any], dict[str, str], int], tuple[Any, ...]]


def default_agent(end_marker: str = "[END_CALL]", turns: int = 3) -> Responder:
    """An agent keeping its state per ``session_id``: turn k says so; turn ``turns`` ends the call."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        session = str(body.get("session_id"))
        with lock:
            seen[session] += 1
            k = seen[session]
        text = f"Agent turn {k} heard {body.get('message')!r}"
        return 200, {"reply": {"text": text + (f" {end_marker}" if k >= turns else "")}}

    return respond


class LoopbackAgentServer:
    """``url`` is the agent's endpoint (``http://127.0.0.1:<port>/agent``)."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond = respond or default_agent()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner.requests.append({"body": body, "headers": headers, "path": self.path})
                    n = len(owner.requests)
                status, payload, *rest = owner.respond(body, headers, n)
                if rest and rest[0] and owner._stopping.wait(rest[0]):
                    return
                extra: dict[str, str] = rest[1] if len(rest) > 1 else {}
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/agent"

    def start(self) -> LoopbackAgentServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LoopbackAgentServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
