"""Throughput at a provider's rate limits: header parsing, the token estimate, the limiter's pacing and adaptive
concurrency (unit tests), and runs against the scripted server enforcing requests- and tokens-per-minute limits."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import default_script, scenario
from pytest_llmsim.llm.rate_limits import (
    LimitStats,
    RateLimiter,
    estimate_prompt_tokens,
    merge_stats,
    parse_duration,
    read_headers,
    throughput_fields,
)
from pytest_llmsim.reporting.summary import RunSummary
from pytest_llmsim.reporting.terminal import totals_lines
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

MESSAGES = ({"role": "system", "content": "You are a shop assistant. " * 4}, {"role": "user", "content": "hello"})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- parsing ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("8.64s", 8.64), ("2", 2.0), ("0.5", 0.5),
    ("", None), ("soon", None), ("1s garbage", None), ("-3", None), (None, None),
])
def test_reset_durations_as_openai_and_azure_write_them(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == pytest.approx(seconds) if seconds is not None else parse_duration(text) is None


def test_rate_limit_headers_are_read_case_insensitively_and_absent_headers_give_none() -> None:
    headers = httpx.Headers({"X-RateLimit-Limit-Requests": "600", "x-ratelimit-remaining-requests": "599",
                             "x-ratelimit-reset-requests": "100ms", "x-ratelimit-limit-tokens": "150000",
                             "x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "6m0s"})
    observed = read_headers(headers)
    assert observed is not None
    assert (observed.limit_requests, observed.remaining_requests, observed.reset_requests) == (600, 599, 0.1)
    assert (observed.limit_tokens, observed.remaining_tokens, observed.reset_tokens) == (150000, 149000, 360)
    assert read_headers(httpx.Headers({"content-type": "application/json"})) is None
    assert read_headers(None) is None
    bad = read_headers({"x-ratelimit-remaining-tokens": "lots", "x-ratelimit-limit-tokens": "inf"})
    assert bad is not None and bad.remaining_tokens is None and bad.limit_tokens is None


def test_the_prompt_estimate_counts_characters_and_messages() -> None:
    one = estimate_prompt_tokens([{"role": "user", "content": "x" * 400}])
    assert one == pytest.approx(100 + 4 + 3)
    assert estimate_prompt_tokens([{"role": "user", "content": "x" * 400}] * 2) == pytest.approx(2 * 104 + 3)
    assert estimate_prompt_tokens([{"role": "user", "content": None}]) == pytest.approx(7)


def test_figures_of_several_processes_add_up_over_the_common_span() -> None:
    a = LimitStats(requests=60, rate_limited=2, wait_seconds=1.5, tokens=6000, reserved_tokens=9000.0,
                   first_sent=1000.0, last_done=1060.0)
    b = {"requests": 30, "rate_limited": 1, "wait_seconds": 0.5, "tokens": 3000, "reserved_tokens": 4500.0,
         "first_sent": 1030.0, "last_done": 1120.0}
    merged = merge_stats([a, b, None, {"requests": "many"}])
    assert (merged.requests, merged.rate_limited, merged.first_sent, merged.last_done) == (90, 3, 1000.0, 1120.0)
    fields = throughput_fields(merged)
    assert fields == {"rate_limited_requests": 3, "limiter_wait_seconds": 2.0, "effective_rpm": 45.0,
                      "effective_tpm": 4500.0, "reserved_tpm": 6750.0}
    assert throughput_fields(LimitStats())["effective_rpm"] is None


def test_the_terminal_line_reports_429s_wait_and_rates() -> None:
    summary = RunSummary(total_scenarios=1, rate_limited_requests=3, limiter_wait_seconds=12.5, effective_rpm=590.0,
                         effective_tpm=41200.0, reserved_tpm=148000.0)
    assert ("rate limits: 3 requests answered 429, requests waited 12.5 s for the limiter; 590 requests/min, 41200 "
            "tokens/min (148000 counted against a tokens-per-minute limit)") in totals_lines(summary)
    assert not any(line.startswith("rate limits") for line in totals_lines(RunSummary(total_scenarios=1)))


# -- the limiter ----------------------------------------------------------------------------------------------
def test_a_static_rpm_spaces_requests_evenly() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter(rpm=1200)  # one request every 50 ms
        times = []
        for _ in range(11):
            ticket = await limiter.acquire("m", MESSAGES, 10)
            times.append(time.monotonic())
            limiter.finish(ticket, 200, None, {"usage": {"prompt_tokens": 5, "completion_tokens": 2}})
        assert limiter.stats.requests == 11 and limiter.stats.tokens == 77
        assert 0.4 <= limiter.stats.wait_seconds <= times[-1] - times[0] + 0.1  # (wall clock: a loaded CI machine)
        return times

    times = run(main())
    assert times[-1] - times[0] == pytest.approx(0.5, abs=0.1)
    assert min(b - a for a, b in itertools.pairwise(times)) > 0.04


@pytest.mark.slow
def test_a_static_tpm_paces_by_the_estimated_prompt_plus_max_tokens() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=60_000)  # 1000 tokens a second; each request costs about 300 + 17
        started = time.monotonic()
        for _ in range(7):
            ticket = await limiter.acquire("m", MESSAGES, 300)
            assert ticket.tokens == pytest.approx(estimate_prompt_tokens(MESSAGES) + 300)
            limiter.finish(ticket, 200)
        return time.monotonic() - started

    # one second of tokens at the start, then 1000 a second: 7 x ~345 tokens need about 1.4 s more
    assert run(main()) == pytest.approx(1.4, abs=0.25)


def test_no_limit_known_means_no_wait_and_no_budget() -> None:
    async def main() -> None:
        limiter = RateLimiter(concurrency=4)
        tickets = [await limiter.acquire("m", MESSAGES, 300) for _ in range(4)]
        assert limiter.stats.wait_seconds == 0 and not tickets[0].key.paced and tickets[0].mark == 0
        for ticket in tickets:
            limiter.finish(ticket, 200, httpx.Headers({"content-type": "application/json"}), {})
        assert not tickets[0].key.paced

    run(main())


def test_429s_halve_the_concurrency_once_per_round_and_successes_grow_it_back() -> None:
    async def main() -> None:
        limiter = RateLimiter(concurrency=16)
        round_one = [await limiter.acquire("m") for _ in range(16)]
        key = round_one[0].key
        for ticket in round_one[:5]:  # five 429s of one round of requests: one cut
            limiter.finish(ticket, 429)
        assert key.window == 8 and limiter.stats.rate_limited == 5
        # at most 8 in flight now: 11 are; a new request waits until 4 more are released
        waiting = asyncio.ensure_future(limiter.acquire("m"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        for ticket in round_one[5:9]:
            limiter.finish(ticket, 200)
        ticket = await asyncio.wait_for(waiting, 1)
        assert key.in_flight <= int(key.window)
        limiter.finish(ticket, 429)  # sent after the cut: cuts again
        assert key.window == pytest.approx(4.0, abs=0.6)
        for ticket in round_one[9:]:
            limiter.finish(ticket, 200)
        for _ in range(200):
            limiter.finish(await limiter.acquire("m"), 200)
        assert key.window == 16 and key.in_flight == 0  # grown back, never above the configured 16

    run(main())


def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    async def main() -> None:
        limiter = RateLimiter(concurrency=1)
        first = await limiter.acquire("m")
        second = asyncio.ensure_future(limiter.acquire("m"))
        third = asyncio.ensure_future(limiter.acquire("m"))
        await asyncio.sleep(0.01)
        limiter.finish(first, 200)  # wakes the second ...
        second.cancel()  # ... which is cancelled before it runs: the third must still get its turn
        ticket = await asyncio.wait_for(third, 1)
        limiter.finish(ticket, 200)

    run(main())


def test_headers_pace_before_the_429() -> None:
    """After a reply saying 0 requests remain of 120 a minute, the next request waits for the refill (0.5 s)."""
    async def main() -> float:
        limiter = RateLimiter()
        ticket = await limiter.acquire("m", MESSAGES, 10)
        limiter.finish(ticket, 200, {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "5"})
        ticket = await limiter.acquire("m", MESSAGES, 10)  # now paced, starting from one request
        limiter.finish(ticket, 200, {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0"})
        started = time.monotonic()
        limiter.finish(await limiter.acquire("m", MESSAGES, 10), 200)
        return time.monotonic() - started

    assert run(main()) == pytest.approx(0.5, abs=0.12)


def test_a_429_pause_holds_every_request_to_that_model() -> None:
    async def main() -> tuple[float, float]:
        limiter = RateLimiter()
        limiter.back_off(0.3, "m")
        started = time.monotonic()
        limiter.finish(await limiter.acquire("other"), 200)
        other = time.monotonic() - started
        limiter.finish(await limiter.acquire("m"), 200)
        return other, time.monotonic() - started

    other, paused = run(main())
    assert other < 0.05 and paused == pytest.approx(0.3, abs=0.08)


@pytest.mark.slow
def test_two_limiters_on_one_shared_budget_stay_under_the_cap_together(tmp_path: Path) -> None:
    """Two processes' limiters (here two in one loop) share the file budget: together 20 requests at 1200/min take
    about a second, where two private budgets would take half that."""
    async def main() -> float:
        limiters = [RateLimiter(rpm=1200, shared_dir=tmp_path, workers=2, endpoint="e") for _ in range(2)]

        async def use(limiter: RateLimiter) -> None:
            for _ in range(10):
                limiter.finish(await limiter.acquire("m", MESSAGES, 10), 200)

        started = time.monotonic()
        await asyncio.gather(*(use(limiter) for limiter in limiters))
        for limiter in limiters:
            limiter.close()
        return time.monotonic() - started

    assert run(main()) == pytest.approx(0.95, abs=0.15)
    assert len(list(tmp_path.glob("rate-*.bin"))) == 1


# -- the scripted server's limits --------------------------------------------------------------------------------
def test_the_server_answers_429_with_openai_s_body_and_headers() -> None:
    script = {"rules": [{"reply": "hi"}], "limits": {"rpm": 60, "tpm": 100_000, "burst": 2}}
    with ScriptedOpenAIServer(script) as server:
        body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 7}
        replies = [httpx.post(f"{server.base_url}/chat/completions", json=body) for _ in range(3)]
        stats = server.stats()
        log = server.admitted_log()
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[0].headers["x-ratelimit-limit-requests"] == "60"
    assert replies[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert replies[0].headers["x-ratelimit-remaining-tokens"] == str(int(100_000 * 2 / 60) - 10)
    error = replies[2].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "on requests per min (RPM): Limit 60" in error["message"]
    assert 0 < int(replies[2].headers["retry-after-ms"]) <= 1000
    assert parse_duration(replies[2].headers["x-ratelimit-reset-requests"]) is not None
    assert stats["limits"] == {"admitted": 2, "admitted_tokens": 20.0, "rate_limited": {"requests": 1}}
    assert [tokens for _, _, tokens in log] == [10.0, 10.0]


def test_bad_server_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown limits key"):
        ScriptedOpenAIServer({"rules": [], "limits": {"rps": 3}})
    with pytest.raises(ValueError, match="positive"):
        ScriptedOpenAIServer(limits={"rpm": 0.0, "burst": -1})


# -- whole runs ------------------------------------------------------------------------------------------------------
def _max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _limited_script(**limits: Any) -> dict[str, Any]:
    return {**default_script(), "limits": limits}


def _scenarios(sim: Any, count: int) -> None:
    sim.write_scenarios("many.json", [scenario(f"s{i:03d}") for i in range(count)])


def _export(sim: Any) -> dict[str, Any]:
    return json.loads((sim.path / "out.json").read_text())


@pytest.mark.slow
def test_a_run_at_a_tight_rpm_paces_itself_from_the_headers(sim: Any) -> None:
    """The server allows 1200 requests a minute (20 a second, a one-second burst); 16 conversations at once would
    send about 60 a second. The run paces from the headers: no error, few 429s, the limit held."""
    sim.server.set_script(_limited_script(rpm=1200, burst=1))
    _scenarios(sim, 16)
    result = sim.run("--llmsim-concurrency=16", "--llmsim-results=out.json")
    result.assert_outcomes(passed=16)
    stats = sim.server.stats()
    assert stats["completed"] == 16 * 7
    rejected = stats["status_counts"].get("429", 0)
    assert rejected <= 0.1 * stats["requests"], stats
    summary = _export(sim)["summary"]
    assert summary["rate_limited_requests"] == rejected
    assert summary["effective_rpm"] == pytest.approx(1200, rel=0.35)
    assert summary["limiter_wait_seconds"] > 1
    result.stdout.fnmatch_lines([f"rate limits: {rejected} requests answered 429, requests waited * s for the limiter; "
                                 "* requests/min, * tokens/min (* counted against a tokens-per-minute limit)"])


@pytest.mark.slow
def test_a_tokens_per_minute_limit_binds_through_the_estimate(sim: Any) -> None:
    """Every request reserves its max_tokens (300 for the agent and the judge, 150 for the customer): at 30 000
    tokens a minute the tokens bind long before the requests do."""
    sim.server.set_script(_limited_script(rpm=100_000, tpm=30_000, burst=1))
    _scenarios(sim, 6)
    result = sim.run("--llmsim-concurrency=6", "--llmsim-results=out.json")
    result.assert_outcomes(passed=6)
    stats = sim.server.stats()
    # Before the first reply announces the limit, each of the 6 conversations in flight may meet one 429 (4 or 5
    # were seen, by timing); a limiter that did not pace by the estimate would meet dozens.
    assert stats["status_counts"].get("429", 0) <= 6, stats
    assert stats["limits"]["rate_limited"].get("requests", 0) == 0
    summary = _export(sim)["summary"]
    assert summary["reserved_tpm"] == pytest.approx(30_000, rel=0.3)


@pytest.mark.slow
def test_static_caps_hold_without_any_header(sim: Any) -> None:
    """A server that sends no rate-limit headers: --llmsim-rpm alone keeps the pace (no 429 to learn from)."""
    _scenarios(sim, 8)
    result = sim.run("--llmsim-concurrency=8", "--llmsim-rpm=1800", "--llmsim-tpm=1000000")
    result.assert_outcomes(passed=8)
    times = sorted(entry["time"] for entry in sim.server.requests_log())
    assert _max_in_window(times, 1.0) <= 31  # 30 a second, plus the one the first second starts with
    assert (times[-1] - times[0]) * 30 >= len(times) - 2


@pytest.mark.slow
def test_xdist_workers_share_one_budget(sim: Any) -> None:
    """Two workers under one --llmsim-rpm: together they stay under it (one budget in the session's temp folder),
    instead of each taking the whole cap; the summary adds both workers' figures up."""
    pytest.importorskip("xdist")
    _scenarios(sim, 12)
    result = sim.run("-n", "2", "--llmsim-concurrency=6", "--llmsim-rpm=1200", "--llmsim-results=out.json")
    result.assert_outcomes(passed=12)
    times = sorted(entry["time"] for entry in sim.server.requests_log())
    assert len(times) == 12 * 7
    assert _max_in_window(times, 1.0) <= 21  # 20 a second for both workers together
    span = times[-1] - times[0]
    assert len(times) / span <= 21
    summary = _export(sim)["summary"]
    assert summary["effective_rpm"] == pytest.approx(1200, rel=0.2)
    assert summary["limiter_wait_seconds"] > 1


@pytest.mark.slow
def test_xdist_workers_under_a_server_limit_get_few_429s(sim: Any) -> None:
    pytest.importorskip("xdist")
    sim.server.set_script(_limited_script(rpm=1200, burst=1))
    _scenarios(sim, 12)
    result = sim.run("-n", "2", "--llmsim-concurrency=8", "--llmsim-results=out.json")
    result.assert_outcomes(passed=12)
    stats = sim.server.stats()
    assert stats["completed"] == 12 * 7
    assert stats["status_counts"].get("429", 0) <= 0.15 * stats["requests"], stats
    summary = _export(sim)["summary"]
    assert summary["rate_limited_requests"] == stats["status_counts"].get("429", 0)


@pytest.mark.slow
def test_a_replayed_run_shows_no_rate_line(sim: Any) -> None:
    _scenarios(sim, 2)
    sim.run().assert_outcomes(passed=2)
    replay: Callable[..., Any] = sim.run
    result = replay("--llmsim-record=none", "--llmsim-results=out.json")
    result.assert_outcomes(passed=2)
    assert "rate limits:" not in result.stdout.str()
    assert _export(sim)["summary"]["effective_rpm"] is None
