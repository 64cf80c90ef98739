"""The scripted test server itself: rules, faults and statistics over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
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
