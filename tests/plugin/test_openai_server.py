"""The scripted test server itself: rules, faults (hang, drip, closed connections, echoed keys) and statistics
over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer


def post(server: ScriptedOpenAIServer, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def chat(system: str, *turns: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"model": "m1", "messages": messages, **extra}


def test_replies_follow_the_number_of_assistant_messages() -> None:
    script = {"rules": [{"match": {"system_contains": "AGENT"}, "replies": ["one", "two"]}]}
    with ScriptedOpenAIServer(script) as server:
        texts = [post(server, chat("AGENT", *turns))[2]["choices"][0]["message"]["content"]
                 for turns in (["hi"], ["hi", "x", "y"], ["hi", "x", "y", "z", "w"])]
        assert texts == ["one", "two", "two"]


def test_first_matching_rule_wins_and_placeholders_are_filled() -> None:
    script = {"rules": [
        {"match": {"last_user_contains": "price"}, "reply": "seed={seed} model={model}"},
        {"reply": "fallback"},
    ]}
    with ScriptedOpenAIServer(script) as server:
        _, _, first = post(server, chat("S", "what price?", seed=7))
        _, _, second = post(server, chat("S", "hello"))
        assert first["choices"][0]["message"]["content"] == "seed=7 model=m1"
        assert second["choices"][0]["message"]["content"] == "fallback"
        assert first["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_status_for_the_first_times_then_replies_with_retry_after() -> None:
    script = {"rules": [{"status": 429, "times": 2, "retry_after": 3, "reply": "finally"}]}
    with ScriptedOpenAIServer(script) as server:
        results = [post(server, chat("S", "hi")) for _ in range(3)]
        assert [r[0] for r in results] == [429, 429, 200]
        assert results[0][1]["Retry-After"] == "3"
        assert server.stats()["status_counts"] == {"429": 2, "200": 1}
        assert server.stats()["completed"] == 1


def test_rejected_response_format_and_raw_body() -> None:
    script = {"rules": [
        {"match": {"system_contains": "RAW"}, "raw_body": "{not json"},
        {"reply": "ok", "reject_response_format": ["json_schema"]},
    ]}
    with ScriptedOpenAIServer(script) as server:
        assert post(server, chat("S", "hi", response_format={"type": "json_schema"}))[0] == 500
        assert post(server, chat("S", "hi", response_format={"type": "json_object"}))[0] == 200
        request = urllib.request.Request(f"{server.base_url}/chat/completions",
                                         data=json.dumps(chat("RAW", "x")).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"{not json"


def test_peak_in_flight_counts_concurrent_requests() -> None:
    with ScriptedOpenAIServer({"rules": [{"reply": "ok"}]}, latency=0.3) as server:
        threads = [threading.Thread(target=post, args=(server, chat("S", "hi"))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = server.stats()
        assert stats["peak_in_flight"] == 6
        assert stats["in_flight"] == 0
        assert stats["by_model"] == {"m1": 6}


def test_request_log_and_reset() -> None:
    with ScriptedOpenAIServer({"rules": [{"reply": "ok"}]}) as server:
        post(server, chat("S", "hi"))
        log = server.requests_log()
        assert log[0]["body"]["messages"][1]["content"] == "hi"
        assert log[0]["headers"]["content-type"] == "application/json"
        server.reset()
        assert server.requests_log() == [] and server.stats()["requests"] == 0


def test_a_stopped_server_refuses_connections() -> None:
    server = ScriptedOpenAIServer({"rules": [{"reply": "ok"}]})
    server.start()
    url = server.base_url
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/models", timeout=2)


def raw_post(server: ScriptedOpenAIServer, body: dict[str, Any], path: str = "/v1/chat/completions",
             headers: dict[str, str] | None = None, timeout: float = 5.0) -> socket.socket:
    """Send a chat request on a raw socket: the faults below are about bytes, not about parsed replies."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def split_reply(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return status_line, headers, body


def test_hang_never_answers_and_stop_still_returns_promptly() -> None:
    server = ScriptedOpenAIServer({"rules": [{"fault": "hang"}]})
    server.start()
    sock = raw_post(server, chat("S", "hi"), timeout=0.5)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    assert server.stats()["faults"] == {"hang": 1} and server.stats()["in_flight"] == 1
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    sock.settimeout(2)
    assert read_to_eof(sock) == b"", "a hung request ends without a byte of reply when the server stops"


def test_drip_sends_headers_then_a_byte_at_a_time() -> None:
    script = {"rules": [{"fault": "drip", "drip_interval": 0.05, "drip_length": 1000}]}
    with ScriptedOpenAIServer(script) as server:
        sock = raw_post(server, chat("S", "hi"))
        received = b""
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            received += sock.recv(65536)
        status, headers, body = split_reply(received)
        assert status == "HTTP/1.1 200 OK" and headers["Content-Length"] == "1000"
        assert 2 <= len(body) < 1000 and body.strip() == b""
        sock.close()
        started = time.monotonic()
    assert time.monotonic() - started < 2


def test_close_before_reply_and_close_mid_body() -> None:
    script = {"rules": [{"match": {"system_contains": "BEFORE"}, "fault": "close_before_reply"},
                        {"match": {"system_contains": "MID"}, "fault": "close_mid_body", "reply": "a complete reply"}]}
    with ScriptedOpenAIServer(script) as server:
        assert read_to_eof(raw_post(server, chat("BEFORE", "hi"))) == b""
        status, headers, body = split_reply(read_to_eof(raw_post(server, chat("MID", "hi"))))
        assert status == "HTTP/1.1 200 OK"
        assert 0 < len(body) < int(headers["Content-Length"])
        assert server.stats()["faults"] == {"close_before_reply": 1, "close_mid_body": 1}
        assert server.stats()["in_flight"] == 0


def test_faults_honour_times_then_reply() -> None:
    script = {"rules": [{"fault": "close_before_reply", "times": 1, "reply": "second time lucky"}]}
    with ScriptedOpenAIServer(script) as server:
        assert read_to_eof(raw_post(server, chat("S", "hi"))) == b""
        assert post(server, chat("S", "hi"))[2]["choices"][0]["message"]["content"] == "second time lucky"


def test_echo_auth_repeats_the_key_and_the_query() -> None:
    with ScriptedOpenAIServer({"rules": [{"echo_auth": True}]}) as server:
        sock = raw_post(server, chat("S", "hi"), path="/v1/chat/completions?api-key=qsecret",
                        headers={"Authorization": "Bearer sk-echoed"})
        status, _, body = split_reply(read_to_eof(sock))
        assert status.startswith("HTTP/1.1 401")
        message = json.loads(body)["error"]["message"]
        assert "Bearer sk-echoed" in message and "/v1/chat/completions?api-key=qsecret" in message
        assert server.requests_log()[0]["path"] == "/v1/chat/completions?api-key=qsecret"


def test_handler_threads_are_bounded() -> None:
    server = ScriptedOpenAIServer({"rules": [{"fault": "hang"}]}, max_threads=2)
    server.start()
    socks = [raw_post(server, chat("S", "hi")) for _ in range(3)]
    deadline = time.monotonic() + 5
    while server.stats()["requests"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert server.stats()["requests"] == 2, "the third connection waits for a free handler thread"
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    for sock in socks:
        sock.close()


def test_unknown_fault_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        ScriptedOpenAIServer({"rules": [{"fault": "explode"}]})


def test_invalid_script_is_rejected() -> None:
    with pytest.raises(ValueError, match="'rules' list"):
        ScriptedOpenAIServer({"reply": "x"})


def test_command_line_server(tmp_path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"reply": "from the CLI"}]}))
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llmsim.testing.openai_server", "--script", str(script)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "LISTENING"
        request = urllib.request.Request(f"{line[1]}/chat/completions", data=json.dumps(chat("S", "x")).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["choices"][0]["message"]["content"] == "from the CLI"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


AGENT_SCRIPT = {"rules": [
    {"match": {"last_role": "tool", "last_tool_contains": "boots"}, "reply": "Your boots cost 59.90."},
    {"match": {"tool_offered": "lookup_order"}, "tool_calls": [{"name": "lookup_order", "arguments": {"id": 7}}],
     "reply": "Let me look."},
    {"match": {"no_tools": True}, "reply": "no tools offered"},
]}
LOOKUP_TOOL = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}


def test_agent_framework_rules_answer_with_tool_calls_and_match_the_tool_loop() -> None:
    with ScriptedOpenAIServer(AGENT_SCRIPT) as server:
        status, _, first = post(server, {**chat("S", "where are my boots?"), "tools": [LOOKUP_TOOL]})
        assert status == 200 and first["choices"][0]["finish_reason"] == "tool_calls"
        message = first["choices"][0]["message"]
        (call,) = message["tool_calls"]
        assert message["content"] == "Let me look."
        assert call["function"] == {"name": "lookup_order", "arguments": '{"id": 7}'} and call["type"] == "function"
        follow = chat("S", "where are my boots?")
        follow["messages"] += [message, {"role": "tool", "tool_call_id": call["id"], "content": '{"item": "boots"}'}]
        _, _, second = post(server, {**follow, "tools": [LOOKUP_TOOL]})
        assert second["choices"][0]["message"] == {"role": "assistant", "content": "Your boots cost 59.90."}
        _, _, again = post(server, {**chat("S", "other"), "tools": [LOOKUP_TOOL]})
        assert again["choices"][0]["message"]["tool_calls"][0]["id"] != call["id"]  # ids distinct per request
        _, _, bare = post(server, chat("S", "hi"))
        assert bare["choices"][0]["message"]["content"] == "no tools offered"


def test_a_streamed_request_gets_server_sent_events_the_openai_client_reads() -> None:
    import asyncio

    import openai

    with ScriptedOpenAIServer(AGENT_SCRIPT) as server:
        async def stream() -> tuple[str, list[Any], Any]:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            chunks = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "boots?"}], tools=[LOOKUP_TOOL],  # type: ignore[list-item]
                stream=True, stream_options={"include_usage": True})
            text, calls, usage = "", [], None
            async for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    calls += choice.delta.tool_calls or []
            await client.close()
            return text, calls, usage

        text, calls, usage = asyncio.run(stream())
    assert text == "Let me look."
    assert [(c.function.name, c.function.arguments) for c in calls] == [("lookup_order", '{"id": 7}')]
    assert usage is not None and usage.completion_tokens == 3
