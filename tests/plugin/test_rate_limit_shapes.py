"""Every shape of provider rate limit ends with every scenario scored and no error: the scripted server's shapes
(bucket, fixed, sliding and per-second windows, retry-after only, bare 429s), the limiter's reading of them (a
spent window waits for its reset, bare 429s adapt the pace, the oldest conversation goes first) and the clock that
keeps waiting on a limit off a conversation's timeout, bounded by llmsim_rate_limit_wait."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from conftest import default_script, scenario
from pytest_llmsim.llm.rate_limits import (
    LIMIT_CLOCK,
    LimitClock,
    RateLimiter,
    RateLimitWaitExceeded,
    _capacity_tolerance,
    _implied_capacity,
)
from pytest_llmsim.testing.rate_shapes import SHAPES, Limits

MESSAGES = ({"role": "system", "content": "You are a shop assistant."}, {"role": "user", "content": "hello"})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the server's shapes -----------------------------------------------------------------------------------------
def _fill(limits: Limits, count: int, now: float = 100.0) -> list[tuple[str | None, float, dict[str, str]]]:
    return [limits.admit("m", 1.0, now) for _ in range(count)]


def test_a_fixed_window_refuses_until_it_ends_and_says_so() -> None:
    limits = Limits({"shape": "fixed", "rpm": 60, "window": 10})  # 10 per 10 s window
    answers = _fill(limits, 11)
    assert all(refused is None for refused, _, _ in answers[:10])
    refused, wait, headers = answers[10]
    assert refused == "requests" and wait == pytest.approx(10)
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"] == "10s"
    assert headers["retry-after"] == "10"
    assert limits.admit("m", 1.0, 110.0)[0] is None  # the next window


def test_a_sliding_window_resets_when_the_oldest_request_leaves_and_says_retry_after_1() -> None:
    limits = Limits({"shape": "sliding", "rpm": 60, "window": 10})
    assert limits.admit("m", 1.0, 100.0)[0] is None
    _fill(limits, 9, now=105.0)
    refused, wait, headers = limits.admit("m", 1.0, 106.0)
    assert refused == "requests" and wait == pytest.approx(4)  # the request of t=100 leaves at t=110
    assert headers["x-ratelimit-reset-requests"] == "4s" and headers["retry-after"] == "1"
    assert limits.admit("m", 1.0, 110.5)[0] is None
    assert limits.admit("m", 1.0, 110.6)[0] == "requests"  # the nine of t=105 are still in the window


def test_per_second_windows_send_only_the_remaining_counts_as_azure() -> None:
    limits = Limits({"shape": "per_second", "rpm": 600, "tpm": 60_000})  # 10 requests a second
    answers = _fill(limits, 11)
    assert set(answers[0][2]) == {"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"}
    refused, _, headers = answers[10]
    assert refused == "requests" and {"retry-after", "retry-after-ms"} <= set(headers)
    assert limits.admit("m", 1.0, 101.0)[0] is None


@pytest.mark.parametrize(("shape", "headers_of_a_429"), [("retry_after", {"retry-after"}), ("bare", set())])
def test_shapes_that_announce_nothing(shape: str, headers_of_a_429: set[str]) -> None:
    limits = Limits({"shape": shape, "rpm": 60, "burst": 2})
    answers = _fill(limits, 3)
    assert answers[0][2] == {} and answers[2][0] == "requests"
    assert set(answers[2][2]) == headers_of_a_429


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown limits shape 'leaky'"):
        Limits({"shape": "leaky", "rpm": 60})


# -- the limiter's reading of them -------------------------------------------------------------------------------
def test_a_bucket_s_counts_imply_one_capacity_a_window_s_drift() -> None:
    """remaining + reset x rate is a bucket's capacity in every reply; a window's reset does not follow its count."""
    bucket = [_implied_capacity(1200, remaining, reset) for remaining, reset in ((1190, 0.5), (0, 60.0), (600, 30.0))]
    assert bucket == [1200, 1200, 1200]
    assert _implied_capacity(6000, 1000, 2.0) == 1200  # a bucket holding 12 s of 6000 a minute
    fixed = [_implied_capacity(1200, remaining, reset) for remaining, reset in ((1199, 59.9), (900, 58.0))]
    assert abs(fixed[1] - fixed[0]) > _capacity_tolerance(fixed[0], 1200)
    assert _implied_capacity(None, 5, None) is None


def test_a_fixed_window_is_told_from_a_bucket_by_its_drifting_counts() -> None:
    async def main() -> tuple[float, float]:
        limiter = RateLimiter()
        flags = []
        for replies in (((1199, "59.9s"), (900, "58s")), ((1190, "500ms"), (900, "15s"))):  # a window, a bucket
            limiter = RateLimiter()
            for remaining, reset in replies:
                ticket = await limiter.acquire("m", MESSAGES, 10)
                limiter.finish(ticket, 200, {"x-ratelimit-limit-requests": "1200",
                                             "x-ratelimit-remaining-requests": str(remaining),
                                             "x-ratelimit-reset-requests": reset})
            flags.append(ticket.key.store.load().window_requests)
        return flags[0], flags[1]

    assert run(main()) == (1.0, 0.0)


def test_a_spent_window_waits_for_its_announced_reset_not_for_the_rate() -> None:
    """remaining 0 of a window (the reset is no bucket's time-to-full): the next request waits for the reset,
    although the announced 1200 a minute would refill one request in 50 ms."""
    async def main() -> float:
        limiter = RateLimiter()
        headers = {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "3",
                   "x-ratelimit-reset-requests": "30s"}
        ticket = await limiter.acquire("m", MESSAGES, 10)
        limiter.finish(ticket, 200, headers)
        ticket = await limiter.acquire("m", MESSAGES, 10)  # paced from now on
        limiter.finish(ticket, 200, {**headers, "x-ratelimit-remaining-requests": "0",
                                     "x-ratelimit-reset-requests": "0.6s"})
        started = time.monotonic()
        limiter.finish(await limiter.acquire("m", MESSAGES, 10), 200)
        return time.monotonic() - started

    assert run(main()) >= 0.55


def test_bare_429s_engage_an_adaptive_pace_at_half_the_rate_that_met_them() -> None:
    async def main() -> None:
        limiter = RateLimiter()
        for _ in range(20):
            limiter.finish(await limiter.acquire("m"), 200)
        ticket = await limiter.acquire("m")
        key = ticket.key
        limiter.finish(ticket, 429)  # no header at all
        assert key.paced and key.adaptive > 0
        first = key.adaptive
        for _ in range(3):
            limiter.finish(await limiter.acquire("m"), 200)
        assert key.adaptive > first  # grows back with each success
        limiter.finish(await limiter.acquire("m"), 429, {"x-ratelimit-limit-requests": "600",
                                                         "x-ratelimit-remaining-requests": "0"})
        assert key.announced  # a limit announced: its pace takes over; no further adaptive cut

    run(main())


def test_the_oldest_conversation_goes_first_in_the_limiter_s_queues() -> None:
    """Requests of conversations that started earlier (a lower clock priority) leave the queue first, whatever
    the order they arrived in: for the concurrency window and for the paced budget alike."""
    async def main() -> tuple[list[int], list[int]]:
        limiter = RateLimiter(concurrency=1)
        order: list[int] = []

        async def request(priority: int) -> None:
            LIMIT_CLOCK.set(LimitClock(None, priority=priority))
            ticket = await limiter.acquire("m")
            order.append(priority)
            await asyncio.sleep(0)
            limiter.finish(ticket, 200)

        held = await limiter.acquire("m")
        tasks = [asyncio.create_task(request(p)) for p in (5, 4, 3, 2, 1)]  # the newest conversation asks first
        await asyncio.sleep(0.01)
        limiter.finish(held, 200)
        await asyncio.gather(*tasks)
        window_order = list(order)

        order.clear()
        limiter = RateLimiter(rpm=600)  # one request every 100 ms: the others queue for the budget
        limiter.finish(await limiter.acquire("m"), 200)
        head = asyncio.create_task(request(0))  # takes the queue's head and waits there for the budget
        await asyncio.sleep(0.01)
        tasks = [asyncio.create_task(request(p)) for p in (5, 4, 3, 2, 1)]
        await asyncio.gather(head, *tasks)
        return window_order, order

    window_order, budget_order = run(main())
    assert window_order == [1, 2, 3, 4, 5]
    assert budget_order == [0, 1, 2, 3, 4, 5]


def test_waiting_on_the_limit_stops_the_conversation_s_deadline() -> None:
    async def main() -> bool:
        clock = LimitClock(bound=None)
        survived = False
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3) as deadline:
                clock.bind(deadline)
                clock.begin()
                await asyncio.sleep(0.6)  # twice the deadline, all of it waiting on the limit
                clock.end()
                survived = not deadline.expired()
                await asyncio.sleep(30)  # the conversation's own time runs again: the deadline ends this
        return survived

    assert run(main())


def test_the_wait_bound_fires_the_deadline_during_a_wait() -> None:
    async def main() -> bool:
        clock = LimitClock(bound=0.2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30) as deadline:
                clock.bind(deadline)
                clock.begin()
                try:
                    await asyncio.sleep(30)
                finally:
                    clock.end()
        return clock.exhausted()

    assert run(main())


def test_a_request_stuck_behind_the_limit_ends_at_the_wait_bound() -> None:
    async def main() -> None:
        limiter = RateLimiter()
        limiter.back_off(3600, "m")  # a limit that will not open in this test's life
        LIMIT_CLOCK.set(LimitClock(bound=0.3))
        await limiter.acquire("m")

    with pytest.raises(RateLimitWaitExceeded):
        run(main())


# -- a suite through the plugin, per shape -----------------------------------------------------------------------
# 480 requests a minute (8 a second), windows scaled down from a minute to 2 s: 6 scenarios of 7 calls need about
# 5 s at the limit, more than the 2 s timeout each conversation is given: only if waiting on the limit is kept off
# the timeout does every conversation end as its script says and get scored.
SHAPE_LIMITS: dict[str, dict[str, Any]] = {
    "bucket": {"burst": 1},
    "fixed": {"window": 2},
    "sliding": {"window": 2, "retry_after": 0.2},
    "per_second": {"window": 1},
    "retry_after": {"burst": 1},
    "bare": {"burst": 1},
}
assert set(SHAPE_LIMITS) == set(SHAPES)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_ends_with_every_scenario_scored_and_no_error(sim: Any, shape: str) -> None:
    sim.server.set_script({**default_script(), "limits": {"shape": shape, "rpm": 480, **SHAPE_LIMITS[shape]}})
    sim.write_scenarios("many.json", [scenario(f"s{i}") for i in range(6)])
    result = sim.run("--llmsim-concurrency=6", "--llmsim-timeout=2", "--llmsim-results=out.json")
    result.assert_outcomes(passed=6)
    results = json.loads((sim.path / "out.json").read_text())["results"]
    assert [r["status"] for r in results] == ["passed"] * 6
    assert all(r["score"] == 3 and r["ended_by"] != "timeout" for r in results), results
    stats = sim.server.stats()
    assert stats["completed"] == 6 * 7  # every call answered once: nothing given up


@pytest.mark.slow
def test_a_limit_that_never_opens_ends_in_an_error_naming_it(sim: Any) -> None:
    sim.server.set_script({"rules": [{"status": 429, "retry_after": 1}]})
    sim.write_scenarios("one.json", [scenario("stuck")])
    result = sim.run("--llmsim-rate-limit-wait=2", "--llmsim-timeout=60")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*gave up waiting for the rate limit of *: this scenario's requests waited *s in "
                                 "all*answered 429), llmsim_rate_limit_wait=2s*"])


@pytest.mark.slow
def test_a_retry_after_longer_than_the_wait_left_ends_at_once_naming_it(sim: Any) -> None:
    """Retry-After: 3600 with llmsim_rate_limit_wait=600: sitting out 600 s would end in the same error."""
    sim.server.set_script({"rules": [{"status": 429, "retry_after": 3600}]})
    sim.write_scenarios("one.json", [scenario("stuck")])
    started = time.monotonic()
    result = sim.run("--llmsim-rate-limit-wait=600", "--llmsim-timeout=60")
    result.assert_outcomes(errors=1)
    assert time.monotonic() - started < 30
    result.stdout.fnmatch_lines(["*gave up waiting for the rate limit of *: the limit announced a wait of 3600s, "
                                 "more than the 600s this scenario may still wait, so it stopped at once; *"])


@pytest.mark.slow
def test_a_window_whose_announced_reset_is_past_the_wait_left_ends_at_once(sim: Any) -> None:
    """A fixed window of 10 requests per 600 s: the second scenario finds it spent, its reset ~600 s away, more
    than the 20 s it may wait; the first scenario is scored, the second errors at once instead of after 20 s."""
    sim.server.set_script({**default_script(), "limits": {"shape": "fixed", "rpm": 1, "window": 600}})
    sim.write_scenarios("two.json", [scenario("first"), scenario("second")])
    started = time.monotonic()
    sim.run("--llmsim-concurrency=1", "--llmsim-rate-limit-wait=20", "--llmsim-timeout=60",
             "--llmsim-results=out.json")
    assert time.monotonic() - started < 15
    results = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert results["first"]["status"] == "passed"
    assert results["second"]["status"] == "error"
    assert "the limit announced a wait of" in results["second"]["error_message"]
