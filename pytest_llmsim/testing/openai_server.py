"""A scripted, deterministic OpenAI-compatible chat server on 127.0.0.1, over real HTTP.

Why one module: it is a self-contained test server (script matching, answers, rate-limit emulation, the HTTP
handler); a test's author reads this one file to know what the scripted endpoint does.

Tests and benchmarks point the plugin at it instead of a model. A *script* is a list of rules; the first rule
whose ``match`` fits a request decides the response::

    {"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": "{\\"score\\": 3, \\"comment\\": \\"ok\\"}"},
        {"match": {"system_contains": "AGENT"}, "replies": ["Hello", "Bye [END_CALL]"]},
        {"match": {"model": "m"}, "status": 429, "times": 2, "retry_after": 1, "reply": "late"},
    ]}

Match keys (all optional, all must hold): ``model``, ``seed`` (a number or a list of them),
``system_contains``, ``last_user_contains``, ``response_format_type``; for agent frameworks (several agents on one
endpoint, tool loops): ``last_role`` (the role of the request's last message: ``user``, ``tool``, ...),
``last_tool_contains`` (the content of the last ``tool`` message), ``tool_offered`` (a tool of that name is in
``tools``), ``no_tools: true`` (the request offers none). Actions: ``tool_calls`` (a list of ``{"name",
"arguments"}``; arguments a JSON object or text) answers with those calls (``finish_reason: tool_calls``) and
``reply`` as the message's content if given; ``reply`` (fixed text) or
``replies`` (indexed by the number of assistant messages already in the request, the last one repeating),
``status`` (an HTTP error), ``error`` (fields merged into that error's body, e.g. ``{"message": "This model's
maximum context length is ...", "code": "context_length_exceeded"}``), ``retry_after`` (seconds, sent as the
Retry-After header), ``delay`` (extra seconds before answering), ``raw_body`` (sent verbatim with 200),
``reject_response_format`` (types answered with ``reject_status``, default 500 as llama.cpp does for
``json_schema``, whatever else the rule says). Replies may use the placeholders ``{seed}``, ``{model}``,
``{n_assistant}``, and, to echo what a naive endpoint repeats, ``{authorization}`` (the request's Authorization
header) and ``{path}`` (the request's path with its query, e.g. ``?api-key=...``).

Faults, for the transport-level trouble a real endpoint causes (``"fault": name``):

* ``hang``: read the request and never answer; the connection stays open until the server stops.
* ``drip``: send 200 headers with ``Content-Length: drip_length`` (default 100000), then one byte every
  ``drip_interval`` seconds (default 1.0): every read makes progress, so only a whole-request deadline ends it.
* ``close_before_reply``: read the request, then close the connection without a byte of reply.
* ``close_mid_body``: send the headers and half of a normal completion's body, then close.

``echo_auth: true`` answers ``status`` (default 401) with an error body that echoes the request's
``Authorization`` header and full path with its query, as a naive or hostile server does.
``status``, ``fault`` and ``echo_auth`` apply to the first ``times`` matching requests only when ``times`` is
given (a flaky endpoint); later matching requests get the rule's normal reply.

``logprobs``: the tokens' probabilities, sent only when the request asks (``"logprobs": true``), as OpenAI sends
them (``choices[0].logprobs.content``, at most ``top_logprobs`` alternatives per token, most probable first): a
mapping ``{"1": 0.2, "2": 0.3, "3": 0.5}`` of the alternatives of one generated token, or a list of such mappings,
one per token; each token generated is the most probable of its alternatives (a probability of 0 is left out, as
the server never lists it). A rule without ``logprobs`` sends none even when asked, as an endpoint that ignores
the parameter does.

``cached_tokens: N`` reports N of the prompt tokens (at most all of them) as read from a prompt cache, in
``usage.prompt_tokens_details.cached_tokens`` as OpenAI does.

Rate limits (``limits`` argument or script key ``"limits": {"rpm": 600, "tpm": 150000, "burst": 60}``): per
model, one counter of requests and one of tokens, by default OpenAI's bucket (refilled continuously at its
per-minute limit, holding ``burst`` seconds of it; default 60, a full minute) and with ``"shape"`` a fixed,
sliding or per-second window, a provider that sends only ``retry-after``, or one that sends bare 429s
(``rate_shapes.py`` says which headers each sends). A request costs 1 request and its prompt tokens (words, as the
usage counts them) plus its ``max_tokens``, charged on arrival as OpenAI does. One that does not fit is answered
429 at once, without the latency, with OpenAI's error body (``code: rate_limit_exceeded``, ``type: requests`` or
``tokens``); rejected requests cost nothing. ``stats()["limits"]`` counts the admitted requests, their tokens and
the 429s; ``admitted_log()`` lists ``(time, model, tokens)`` per admitted request.

A request with ``stream: true`` is answered as server-sent events (``chat.completion.chunk`` deltas, the tool
calls in one delta, a usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``).

Every request waits ``latency`` seconds. :meth:`ScriptedOpenAIServer.stats` counts requests, completions, status
codes, faults, the peak number of requests in flight and requests per model. Usage is counted in words. Handler
threads are daemonic and at most ``max_threads`` at once (further connections wait in the listen backlog);
:meth:`~ScriptedOpenAIServer.stop` wakes hung and dripping handlers, so it returns promptly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from pytest_llmsim.testing.rate_shapes import Limits, duration_text

FAULTS = ("hang", "drip", "close_before_reply", "close_mid_body")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() wakes handlers itself; never wait on a hung one
    request_queue_size = 512
    owner: ScriptedOpenAIServer
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most ``owner.max_threads`` at once."""
        while not self.slots.acquire(timeout=0.05):
            if self.owner._stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


@dataclass
class _Answer:
    status: int = 200
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    fault: str | None = None
    rule: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def do_GET(self) -> None:
        if urlsplit(self.path).path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not urlsplit(self.path).path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner = self.server.owner
        answer = owner._respond(body, headers, self.path)
        if answer.delay and owner._stopping.wait(answer.delay):
            answer.fault = "hang"  # stopping: end like a hung request, without a reply
        if answer.fault is not None:
            self._fault(answer)
            return
        # Count the request as answered before the client can see the answer, so statistics read right
        # after a client call are exact.
        owner._finish(answer.status)
        if body.get("stream") and answer.status == 200 and isinstance(answer.payload, dict) \
                and answer.payload.get("object") == "chat.completion":
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._send_raw(200, _sse(answer.payload, include_usage).encode(),
                           {**answer.headers, "Content-Type": "text/event-stream"})
        elif isinstance(answer.payload, str):
            self._send_raw(answer.status, answer.payload.encode(), answer.headers)
        else:
            self._send_json(answer.status, answer.payload, answer.headers)

    def _fault(self, answer: _Answer) -> None:
        """Misbehave as ``answer.fault`` says; the connection is always closed afterwards."""
        owner = self.server.owner
        self.close_connection = True
        try:
            if answer.fault == "hang":
                owner._stopping.wait()
            elif answer.fault == "drip":
                interval = float(answer.rule.get("drip_interval", 1.0))
                length = int(answer.rule.get("drip_length", 100_000))
                self._send_head(200, length)
                for _ in range(length):
                    if owner._stopping.wait(interval):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
            elif answer.fault == "close_mid_body":
                data = json.dumps(answer.payload).encode()
                self._send_head(200, len(data))
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
            # close_before_reply: nothing to send
        except OSError:
            pass  # the client hung up first
        finally:
            owner._finish(None)  # before the client can see the connection end, as for answers
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_head(self, status: int, length: int, extra_headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if "Content-Type" not in (extra_headers or {}):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(self, status: int, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), extra_headers)

    def _send_raw(self, status: int, data: bytes, extra_headers: dict[str, str] | None = None) -> None:
        try:
            self._send_head(status, len(data), extra_headers)
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (a request timeout); nothing to deliver


def _words(text: Any) -> int:
    return len(str(text or "").split())


def _matches(match: dict[str, Any], body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    response_format = (body.get("response_format") or {}).get("type")
    if "model" in match and body.get("model") != match["model"]:
        return False
    if "seed" in match and body.get("seed") not in (match["seed"] if isinstance(match["seed"], list)
                                                    else [match["seed"]]):
        return False
    if "system_contains" in match and match["system_contains"] not in system:
        return False
    if "last_user_contains" in match and (not users or match["last_user_contains"] not in users[-1]):
        return False
    if "response_format_type" in match and response_format != match["response_format_type"]:
        return False
    if "last_role" in match and (not messages or messages[-1].get("role") != match["last_role"]):
        return False
    if "last_tool_contains" in match:
        tools = [str(m.get("content", "")) for m in messages if m.get("role") == "tool"]
        if not tools or match["last_tool_contains"] not in tools[-1]:
            return False
    offered = {str((tool.get("function") or {}).get("name", tool.get("name", ""))) for tool in body.get("tools") or []
               if isinstance(tool, dict)}
    if "tool_offered" in match and match["tool_offered"] not in offered:
        return False
    return not (match.get("no_tools") and offered)


class ScriptedOpenAIServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server whose replies follow a script."""

    def __init__(self, script: dict[str, Any] | None = None, latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, log_requests: bool = True, max_threads: int = 256,
                 limits: dict[str, Any] | None = None) -> None:
        self.latency = latency
        self._limits: Limits | None = Limits(limits) if limits else None
        self._limits_from_script = False
        self.max_threads = max_threads
        self._stopping = threading.Event()
        self.log_requests = log_requests
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._script: dict[str, Any] = {"rules": []}
        self._rule_hits: Counter[int] = Counter()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.reset()
        self.set_script(script or {"rules": []})

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> str:
        self._stopping.clear()
        httpd = _Server((self._host, self._port), _Handler)
        httpd.owner = self
        httpd.slots = threading.BoundedSemaphore(self.max_threads)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-openai-server", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop listening, wake hung and dripping handlers and cut open connections, so a stopped server really
        is unreachable and stopping takes well under a second whatever the clients are doing."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedOpenAIServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the scripted server is not running; call start() first")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    # -- script and statistics -------------------------------------------------------------------------------
    def set_script(self, script: dict[str, Any]) -> None:
        rules = script.get("rules")
        if not isinstance(rules, list):
            raise ValueError("a script is a mapping with a 'rules' list")
        for rule in rules:
            if "fault" in rule and rule["fault"] not in FAULTS:
                raise ValueError(f"unknown fault {rule['fault']!r}; known faults: {', '.join(FAULTS)}")
        limits = script.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise ValueError("a script's 'limits' is a mapping such as {'rpm': 600, 'tpm': 150000}")
        with self._lock:
            self._script = script
            self._rule_hits = Counter()
            if limits is not None:  # the script's limits replace the constructor's (a new script: fresh buckets)
                self._limits, self._limits_from_script = (Limits(limits) if limits else None), True
            elif self._limits_from_script:
                self._limits, self._limits_from_script = None, False

    def reset(self) -> None:
        """Forget statistics and the request log (the script stays)."""
        with self._lock:
            self._requests = 0
            self._completed = 0
            self._in_flight = 0
            self._peak_in_flight = 0
            self._by_model: Counter[str] = Counter()
            self._status_counts: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._log: list[dict[str, Any]] = []
            self._rule_hits = Counter()
            self._admitted: list[tuple[float, str, float]] = []
            self._limited: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "completed": self._completed,
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "by_model": dict(self._by_model),
                "status_counts": dict(self._status_counts),
                "faults": dict(self._faults),
                "limits": {"admitted": len(self._admitted),
                           "admitted_tokens": sum(tokens for _, _, tokens in self._admitted),
                           "rate_limited": dict(self._limited)},
            }

    def admitted_log(self) -> list[tuple[float, str, float]]:
        """``(time.monotonic(), model, tokens charged)`` of every request the rate limits admitted, in order
        (only while limits are set)."""
        with self._lock:
            return list(self._admitted)

    def requests_log(self) -> list[dict[str, Any]]:
        """Every chat request received, in arrival order: ``{"body", "headers" (lowercase), "path" (with the
        query), "time"}`` (``time``: ``time.monotonic()`` at arrival)."""
        with self._lock:
            return list(self._log)

    # -- request handling (called from handler threads) ------------------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _finish(self, status: int | None) -> None:
        """Count a request as done: answered with ``status``, or ended by a fault (``None``)."""
        with self._lock:
            self._in_flight -= 1
            if status is not None:
                self._status_counts[str(status)] += 1
                if status == 200:
                    self._completed += 1

    def _respond(self, body: dict[str, Any], headers: dict[str, str], path: str) -> _Answer:
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            self._by_model[str(body.get("model"))] += 1
            now = time.monotonic()
            if self.log_requests:
                self._log.append({"body": body, "headers": headers, "path": path, "time": now})
            limited = self._admit(body, now) if self._limits is not None else None
            if limited is not None and limited.status == 429:
                return limited
            index, rule = self._pick_rule(body)
            hits = self._rule_hits[index]
            self._rule_hits[index] += 1
            active = "times" not in rule or hits < int(rule["times"])
        fault = rule.get("fault") if active else None
        answer = _Answer(delay=self.latency + float(rule.get("delay", 0.0)), rule=rule)
        if rule is _NO_RULE:
            answer.status = 404
            answer.payload = {"error": {"message": "no script rule matches this request", "type": "not_found"}}
            return answer
        response_format = (body.get("response_format") or {}).get("type")
        if response_format and response_format in rule.get("reject_response_format", ()):
            answer.status = int(rule.get("reject_status", 500))
            message = f"response_format type {response_format!r} is not supported"
            answer.payload = {"error": {"message": message, "type": "server_error"}}
        elif fault is not None:
            answer.fault = fault
            answer.payload = self._completion(rule, body, headers, path)
            with self._lock:
                self._faults[fault] += 1
        elif active and rule.get("echo_auth"):
            answer.status = int(rule.get("status", 401))
            message = f"invalid credentials {headers.get('authorization', '')!r} for {path}"
            answer.payload = {"error": {"message": message, "type": "invalid_request_error"}}
        elif active and "status" in rule:
            answer.status = int(rule["status"])
            if "retry_after" in rule:
                answer.headers["Retry-After"] = str(rule["retry_after"])
            answer.payload = {"error": {"message": f"scripted HTTP {answer.status}", "type": "scripted",
                                        **dict(rule.get("error") or {})}}
        elif "raw_body" in rule:
            answer.payload = str(rule["raw_body"])
        else:
            answer.payload = self._completion(rule, body, headers, path)
        if limited is not None:
            answer.headers = {**limited.headers, **answer.headers}
        return answer

    def _admit(self, body: dict[str, Any], now: float) -> _Answer:
        """Charge the request to its model's limits (lock held): a 429 answer when it does not fit, else an
        answer carrying only the rate-limit headers."""
        assert self._limits is not None
        model = str(body.get("model") or "scripted")
        messages = body.get("messages") or []
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        cost = float(sum(_words(m.get("content")) for m in messages) + (int(max_tokens) if
                                                                         isinstance(max_tokens, int) else 0))
        refused, wait, headers = self._limits.admit(model, cost, now)
        if refused is None:
            self._admitted.append((now, model, cost))
            return _Answer(headers=headers)
        self._limited[refused] += 1
        unit, short = ("requests", "RPM") if refused == "requests" else ("tokens", "TPM")
        limit = self._limits.limit(refused)
        requested = 1 if refused == "requests" else int(cost)
        message = (f"Rate limit reached for {model} in organization org-scripted on {unit} per min ({short}): "
                   f"Limit {int(limit)}, Used {int(limit)}, Requested {requested}. Please try again in "
                   f"{duration_text(wait)}. Visit https://platform.openai.com/account/rate-limits to learn more.")
        return _Answer(status=429, headers=headers, payload={"error": {
            "message": message, "type": unit, "param": None, "code": "rate_limit_exceeded"}})

    def _pick_rule(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for index, rule in enumerate(self._script["rules"]):
            if _matches(rule.get("match") or {}, body):
                return index, rule
        return -1, _NO_RULE

    @staticmethod
    def _completion(rule: dict[str, Any], body: dict[str, Any], headers: dict[str, str] | None = None,
                    path: str = "") -> dict[str, Any]:
        messages = body.get("messages") or []
        n_assistant = sum(1 for m in messages if m.get("role") == "assistant")
        if rule.get("replies"):
            replies = rule["replies"]
            text = str(replies[min(n_assistant, len(replies) - 1)])
        else:
            text = str(rule.get("reply", ""))
        text = (text.replace("{seed}", str(body.get("seed")))
                .replace("{model}", str(body.get("model")))
                .replace("{n_assistant}", str(n_assistant))
                .replace("{authorization}", (headers or {}).get("authorization", ""))
                .replace("{path}", path))
        prompt_tokens = sum(_words(m.get("content")) for m in messages)
        completion_tokens = _words(text)
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if "cached_tokens" in rule:  # a provider's prompt cache: that many of the prompt tokens (at most all)
            usage["prompt_tokens_details"] = {"cached_tokens": min(int(rule["cached_tokens"]), prompt_tokens)}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if rule.get("tool_calls"):  # ids: distinct per request, the same for the same request
            digest = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()[:12]
            message["content"] = text or None
            message["tool_calls"] = [
                {"id": f"call_{digest}_{i}", "type": "function",
                 "function": {"name": str(call["name"]), "arguments": call.get("arguments", {})
                              if isinstance(call.get("arguments"), str)
                              else json.dumps(call.get("arguments") or {})}}
                for i, call in enumerate(rule["tool_calls"])]
            finish = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": message}
        if body.get("logprobs") and rule.get("logprobs") is not None:
            choice["logprobs"] = {"content": _token_logprobs(rule["logprobs"], body.get("top_logprobs"))}
        return {
            "id": f"chatcmpl-scripted-{n_assistant}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model") or "scripted",
            "choices": [choice],
            "usage": usage,
        }


def _sse(completion: dict[str, Any], include_usage: bool) -> str:
    """A completion as the server-sent events of a streamed one: a role delta, the content, the tool calls, the
    finish reason, the usage (when asked for) and ``[DONE]``."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": 0, "model": completion["model"]}
    choice = completion["choices"][0]
    message = choice["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if message.get("content"):
        deltas.append({"content": message["content"]})
    if message.get("tool_calls"):
        deltas.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


_NO_RULE: dict[str, Any] = {}


def _token_logprobs(spec: Any, top: Any) -> list[dict[str, Any]]:
    """A rule's ``logprobs`` (one mapping of token -> probability, or a list of them, one per generated token) as
    OpenAI's ``logprobs.content``, with at most ``top`` alternatives per token."""
    positions = spec if isinstance(spec, list) else [spec]
    limit = int(top) if isinstance(top, int) and not isinstance(top, bool) else 0
    content = []
    for position in positions:
        ranked = sorted(((str(token), float(p)) for token, p in dict(position).items() if float(p) > 0),
                        key=lambda item: -item[1])
        token, probability = ranked[0]
        content.append({"token": token, "logprob": math.log(probability), "bytes": list(token.encode()),
                        "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                                         for t, p in ranked[:limit]]})
    return content


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible chat API on 127.0.0.1.")
    parser.add_argument("--script", type=Path, help="JSON file with {'rules': [...]} (default: echo rule)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every request waits")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    script = json.loads(args.script.read_text()) if args.script else {"rules": [{"reply": "ok"}]}
    server = ScriptedOpenAIServer(script, latency=args.latency, port=args.port, log_requests=False)
    server.start()
    print(f"LISTENING {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
