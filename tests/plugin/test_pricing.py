"""Prices: the genai-prices database (bundled data, no network), the override file first, the local model free,
unknown models unpriced, cached input tokens cheaper, and where each price came from in the summary."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from conftest import AGENT_REPLIES, SimProject, default_script, scenario
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.llm.local_model import LOCAL_MODEL_NAME
from pytest_llmsim.llm.pricing import DATABASE, PriceTable, load_price_file, load_price_table, scenario_cost, usage_cost
from pytest_llmsim.model.results import ModelUsage, ScenarioResult
from pytest_llmsim.reporting.summary import Gates, make_record, summarize

VERSION = genai_prices.__version__


def _usage(model: str, prompt: int, completion: int, *, calls: int = 1, cached_input: int = 0) -> dict[str, Any]:
    return {"role": "agent", "model": model, "live_calls": calls, "prompt_tokens": prompt,
            "completion_tokens": completion, "cached_input_tokens": cached_input}


def _database_usd(model: str, prompt: int, completion: int, *, provider: str = "openai", cached_input: int = 0,
                  calls: int = 1) -> float:
    """What genai-prices itself says these calls cost, through its public ``calc_price`` (per call, then summed)."""
    usage = genai_prices.Usage(input_tokens=Decimal(prompt) / calls, output_tokens=Decimal(completion) / calls,
                               cache_read_tokens=Decimal(cached_input) / calls)
    return float(genai_prices.calc_price(usage, model, provider_id=provider).total_price * calls)


# -- the database ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("model", "ref", "provider", "matched"), [
    ("gpt-4o-mini", "gpt-4o-mini", "openai", "openai gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "openai", "openai gpt-4o-mini"),  # a dated name
    ("GPT-4o-2024-05-13", "gpt-4o-2024-05-13", "openai", "openai gpt-4o-2024-05-13"),  # a snapshot priced apart
    ("openai/gpt-4o", "gpt-4o", "openai", "openai gpt-4o"),  # a provider prefix
    ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", "anthropic",
     "anthropic claude-3-5-sonnet"),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", "anthropic", "anthropic claude-3-5-sonnet"),
])
def test_database_prices_match_genai_prices_own_numbers(model: str, ref: str, provider: str, matched: str) -> None:
    table = PriceTable.default()
    cost = usage_cost([_usage(model, 120_000, 30_000, calls=3)], table)
    assert cost.spent_usd == pytest.approx(_database_usd(ref, 120_000, 30_000, provider=provider, calls=3),
                                           rel=1e-12)
    assert cost.price_sources == {model: f"genai-prices {VERSION} ({matched})"} and cost.unpriced_models == ()


def test_database_price_has_a_plausible_magnitude() -> None:
    """A sanity check against a broken unit (per token vs per million): a million gpt-4o-mini input tokens cost
    cents to dollars, not micro-dollars or thousands."""
    cost = usage_cost([_usage("gpt-4o-mini", 1_000_000, 0)], PriceTable.default())
    assert 0.01 <= cost.spent_usd <= 5.0


def test_a_date_the_database_does_not_list_falls_back_to_the_undated_model_and_says_so() -> None:
    table = PriceTable.default()
    for model in ("gpt-4o-mini-2099-01-01", "gpt-4o-mini-20990101"):
        found = table.match(model)
        assert found is not None
        assert found.source == f"{DATABASE} (openai gpt-4o-mini; {model}: date not in the database)"
        assert found.cost(1, 1000, 100, 0, table.at) == pytest.approx(_database_usd("gpt-4o-mini", 1000, 100))


@pytest.mark.parametrize("model", ["mystery-model", "gpt-4ox", "gpt", "llama3:8b", "my-org/mystery", ""])
def test_unknown_models_are_unpriced(model: str) -> None:
    cost = usage_cost([_usage(model, 500, 500)], PriceTable.default())
    assert cost.unpriced_models == (model,) and cost.spent_usd == 0 and cost.price_sources == {}


def test_unused_unknown_model_is_not_flagged() -> None:
    cost = scenario_cost({"usage": [{"role": "agent", "model": "mystery", "live_calls": 0, "cached_calls": 0}]},
                         PriceTable.default())
    assert cost.unpriced_models == () and cost.spent_usd == 0


def test_the_local_model_is_free_and_named() -> None:
    cost = usage_cost([_usage(LOCAL_MODEL_NAME, 10_000, 10_000)], PriceTable.default())
    assert cost.spent_usd == 0 and cost.unpriced_models == ()
    assert cost.price_sources == {LOCAL_MODEL_NAME: "local model"}


# -- cached input tokens -----------------------------------------------------------------------------------
def test_cached_input_tokens_are_priced_at_the_cache_read_rate() -> None:
    table = PriceTable.default()
    full = usage_cost([_usage("gpt-4o-mini", 10_000, 1_000, calls=2)], table).spent_usd
    cached = usage_cost([_usage("gpt-4o-mini", 10_000, 1_000, calls=2, cached_input=6_000)], table).spent_usd
    assert cached < full
    assert cached == pytest.approx(_database_usd("gpt-4o-mini", 10_000, 1_000, cached_input=6_000, calls=2))
    # more cached tokens than prompt tokens (a confused server) are at most all of them
    capped = usage_cost([_usage("gpt-4o-mini", 10_000, 1_000, calls=2, cached_input=99_000)], table).spent_usd
    assert capped == pytest.approx(_database_usd("gpt-4o-mini", 10_000, 1_000, cached_input=10_000, calls=2))


def test_cost_splits_live_spend_from_replay_savings() -> None:
    agent = ModelUsage("agent", "gpt-4o-mini")
    agent.add(1000, 200, cached=False, cached_input_tokens=400)
    agent.add(3000, 100, cached=True, cached_input_tokens=1000)
    judge = ModelUsage("evaluator", "gpt-4o")
    judge.add(2000, 50, cached=False)
    unknown = ModelUsage("client", "mystery")
    unknown.add(500, 500, cached=False)
    result = ScenarioResult("s", "f.json::s", "f.json", "passed", 2, score=3, usage=[agent, judge, unknown])
    data = result.to_dict()
    cost = scenario_cost(data, PriceTable.default())
    assert cost.spent_usd == pytest.approx(_database_usd("gpt-4o-mini", 1000, 200, cached_input=400)
                                           + _database_usd("gpt-4o", 2000, 50))
    assert cost.saved_usd == pytest.approx(_database_usd("gpt-4o-mini", 3000, 100, cached_input=1000))
    assert cost.unpriced_models == ("mystery",)
    assert set(cost.price_sources) == {"gpt-4o-mini", "gpt-4o"}
    # A result written before the cached-input fields existed reads them as 0.
    for entry in data["usage"]:
        del entry["cached_input_tokens"], entry["replayed_cached_input_tokens"]
    old = ScenarioResult.from_dict(data)
    assert old.usage[0].cached_input_tokens == 0 and old.usage[0].replayed_cached_input_tokens == 0
    assert scenario_cost(data, PriceTable.default()).spent_usd > cost.spent_usd


# -- the override file -------------------------------------------------------------------------------------
def test_override_file_wins_aliases_and_prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "prices.yaml"
    path.write_text("gpt-4o-mini: {input: 1, output: 2}\n"
                    "my-finetune: {input: 0.3, output: 1.2}\n"
                    "azure-deploy: gpt-4o\n"
                    "llama3: {input: 0, output: 0}\n", encoding="utf-8")
    table = load_price_table(path)
    override = "override file prices.yaml"

    def priced(model: str, prompt: int = 1000, completion: int = 100) -> tuple[float, str]:
        cost = usage_cost([_usage(model, prompt, completion)], table)
        assert cost.unpriced_models == ()
        return cost.spent_usd, cost.price_sources[model]

    # The file's price wins over the database's, for the dated name too (prefix rule).
    assert priced("gpt-4o-mini-2024-07-18") == (pytest.approx((1000 * 1 + 100 * 2) / 1e6), override)
    assert priced("openai/my-finetune") == (pytest.approx((1000 * 0.3 + 100 * 1.2) / 1e6), override)
    assert priced("llama3:8b") == (0.0, override)
    # An alias (exact or by prefix) is priced as its target, here from the database.
    for model in ("azure-deploy", "azure-deploy-2"):
        usd, source = priced(model)
        assert usd == pytest.approx(_database_usd("gpt-4o", 1000, 100))
        assert source == f"{DATABASE} (openai gpt-4o) via the alias azure-deploy -> gpt-4o in {override}"
    # Entries the file does not name stay with the database.
    assert priced("gpt-4o") == (pytest.approx(_database_usd("gpt-4o", 1000, 100)), f"{DATABASE} (openai gpt-4o)")


def test_an_alias_loop_is_unpriced(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("a: b\nb: a\n", encoding="utf-8")
    assert load_price_table(path).match("a") is None


def test_json_price_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m": {"input": 3, "output": 4}}), encoding="utf-8")
    assert usage_cost([_usage("m", 1000, 1000)], load_price_table(path)).spent_usd == pytest.approx(7000 / 1e6)


@pytest.mark.parametrize(("text", "message"), [
    ("m: {input: 1}\n", "model 'm': expected {input"),
    ("m: {input: -1, output: 2}\n", "model 'm': input must be a number >= 0"),
    ("m: {input: '1', output: 2}\n", "model 'm': input must be a number >= 0"),
    ("m: {input: 1, output: true}\n", "model 'm': output must be a number >= 0"),
    ("- a\n- b\n", "expected a mapping"),
    ("m: [1, 2\n", "not valid YAML"),
])
def test_invalid_price_files_name_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="price file") as info:
        load_price_file(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_price_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_price_file(tmp_path / "absent.json")


# -- no network --------------------------------------------------------------------------------------------
NO_NETWORK = textwrap.dedent("""
    import json, sys, threading, time
    attempts = []

    def block(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "http.client.connect",
                     "urllib.Request"):
            attempts.append(event)
            raise ConnectionRefusedError("no network in this test")

    sys.addaudithook(block)
    import genai_prices.data_snapshot
    from pytest_llmsim.llm.pricing import PriceTable, usage_cost

    cost = usage_cost([{"model": m, "live_calls": 1, "prompt_tokens": 1000, "completion_tokens": 100}
                       for m in ("gpt-4o-mini", "claude-3-5-sonnet-20241022", "mystery")], PriceTable.default())
    time.sleep(0.3)  # a background updater would have tried by now
    print(json.dumps({"attempts": attempts, "spent": cost.spent_usd, "unpriced": cost.unpriced_models,
                      "threads": [t.name for t in threading.enumerate()],
                      "auto_update": genai_prices.data_snapshot._custom_snapshot is not None}))
""")


def test_pricing_never_touches_the_network() -> None:
    """Prices come from the data shipped in the package: importing and pricing open no connection, start no
    updater thread and install no fetched snapshot (the audit hook would refuse and record any attempt)."""
    done = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [] and report["threads"] == ["MainThread"] and not report["auto_update"]
    assert report["spent"] > 0 and report["unpriced"] == ["mystery"]


# -- the summary and the reports ---------------------------------------------------------------------------
def test_summary_and_html_name_each_price_source(tmp_path: Path) -> None:
    from pytest_llmsim.reporting.html import summary_html

    path = tmp_path / "prices.yaml"
    path.write_text("my-ft: {input: 1, output: 2}\n", encoding="utf-8")
    table = load_price_table(path)
    records = []
    for name, model in (("a", "gpt-4o-mini"), ("b", "my-ft"), ("c", "gpt-4o-mini"), ("d", "mystery")):
        result = ScenarioResult(name, f"s.json::{name}", "s.json", "passed", 2, score=3,
                                usage=[ModelUsage("agent", model, live_calls=1, prompt_tokens=10)])
        records.append(make_record(result, scenario_cost(result.to_dict(), table), run_id="r", outcome="passed"))
    summary = summarize(records)
    expected = {"gpt-4o-mini": f"{DATABASE} (openai gpt-4o-mini)", "my-ft": f"override file {path}"}
    assert summary.price_sources == expected and summary.unpriced_models == ["mystery"]
    assert summarize([r.to_dict() for r in records]).price_sources == expected  # an export reproduces it
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", summary_html(summary, Gates(), []))))
    assert f"Prices gpt-4o-mini from {DATABASE} (openai gpt-4o-mini); my-ft from override file {path}" in text


def test_terminal_names_the_price_sources(sim: SimProject) -> None:
    (sim.path / "prices.yaml").write_text("my-ft: {input: 1, output: 2}\n", encoding="utf-8")
    sim.write_ini(llmsim_prices="prices.yaml")
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("--llmsim-evaluator-model=my-ft")
    result.assert_outcomes(passed=1)
    lines = [line for line in result.stdout.lines if line.startswith("prices: ")]
    assert lines == [f"prices: gpt-4o-mini from genai-prices {VERSION} (openai gpt-4o-mini); "
                     f"my-ft from override file prices.yaml"]


@pytest.mark.slow
def test_cached_tokens_reported_by_the_endpoint_lower_the_cost(sim: SimProject) -> None:
    """The server reports 5 prompt tokens of each agent call of ``cached_x`` as cached; ``plain`` has the same
    token counts without. Live run: the difference is those tokens at input minus cache-read rate. The replay
    from the call cache, or from the readable recordings (which store the count where it is not 0), keeps the
    count, so its saving is lower by the same amount."""
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "AGENT for cached_x"}, "replies": AGENT_REPLIES, "cached_tokens": 5},
        *rules]})
    sim.write_scenarios("s.json", [scenario("plain"), scenario("cached_x")])
    sim.run("--llmsim-recordings=off", "--llmsim-results=live.json").assert_outcomes(passed=2)
    sim.run("--llmsim-recordings=off", "--llmsim-results=replay.json").assert_outcomes(passed=2)
    sim.run("--llmsim-record=all", "--llmsim-recordings=rec").assert_outcomes(passed=2)
    recorded = json.loads((sim.path / "rec" / "scenarios" / "s.json" / "cached_x.json").read_text())
    assert [c["usage"].get("cached_input_tokens") for c in recorded["calls"] if c["role"] == "agent"] == [5, 5, 5]
    assert "cached_input_tokens" not in (sim.path / "rec" / "scenarios" / "s.json" / "plain.json").read_text()
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.run("--llmsim-record=none", "--llmsim-recordings=rec",
            "--llmsim-results=from_recordings.json").assert_outcomes(passed=2)
    assert json.loads((sim.path / "from_recordings.json").read_text())["summary"]["saved_cost_usd"] == \
        json.loads((sim.path / "replay.json").read_text())["summary"]["saved_cost_usd"]
    agent_calls = 3  # the agent's turns in the default script
    per_token = _database_usd("gpt-4o-mini", 1, 0) - _database_usd("gpt-4o-mini", 1, 0, cached_input=1)
    assert per_token > 0
    for name, fields in (("live.json", ("cost_usd", "cached_input_tokens")),
                         ("replay.json", ("saved_cost_usd", "replayed_cached_input_tokens"))):
        records = {r["scenario"]: r for r in json.loads((sim.path / name).read_text(encoding="utf-8"))["results"]}
        plain, cached = records["plain"], records["cached_x"]
        agent = next(u for u in cached["usage"] if u["role"] == "agent")
        assert agent[fields[1]] == 5 * agent_calls
        assert all(u[fields[1]] == 0 for u in plain["usage"])
        assert plain["prompt_tokens"] == cached["prompt_tokens"]
        assert plain[fields[0]] - cached[fields[0]] == pytest.approx(5 * agent_calls * per_token, abs=2e-8)


@pytest.mark.parametrize(("model", "provider", "tiered"), [
    ("gpt-4o-mini", "openai", False), ("claude-3-5-sonnet-latest", "anthropic", False),
    ("gemini-2.5-pro", "google", True), ("claude-sonnet-4-5", "anthropic", True),
])
def test_the_fast_path_prices_every_call_as_genai_prices_does(model: str, provider: str, tiered: bool) -> None:
    """A price linear in the tokens is computed from per-token rates taken from genai-prices once; a tiered
    price (by prompt size) goes to genai-prices on every call. Either way the figure is the database's own,
    below and above a tier's threshold, with and without cached input."""
    table = PriceTable.default()
    found = table.match(model)
    assert found is not None and found.database_model is not None
    for calls, prompt, completion, cached in [(1, 1000, 100, 0), (3, 30_000, 2_000, 9_000),
                                              (2, 600_000, 4_000, 100_000), (5, 7, 3, 7)]:
        usd = found.cost(calls, prompt, completion, cached, table.at)
        assert usd == pytest.approx(_database_usd(model, prompt, completion, provider=provider,
                                                  cached_input=cached, calls=calls), rel=1e-12)
    assert (found._rates[table.at] is None) is tiered
