"""Price table: shipped prices, dated-name matching, override files, spent vs saved cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmsim.errors import ConfigError
from pytest_llmsim.pricing import ModelPrice, PriceTable, load_price_file, load_price_table, scenario_cost
from pytest_llmsim.results import ModelUsage, ScenarioResult


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini", ModelPrice(0.15, 0.60)),
    ("gpt-4o-mini-2024-07-18", ModelPrice(0.15, 0.60)),  # longest prefix wins over gpt-4o
    ("gpt-4o-2024-08-06", ModelPrice(2.50, 10.00)),
    ("gpt-4o-2024-05-13", ModelPrice(5.00, 15.00)),  # a snapshot priced apart from its family
    ("GPT-4.1-mini-2025-04-14", ModelPrice(0.40, 1.60)),
    ("gpt-4-0613", ModelPrice(30.00, 60.00)),
    ("gpt-4-turbo-2024-04-09", ModelPrice(10.00, 30.00)),
    ("gpt-3.5-turbo-0125", ModelPrice(0.50, 1.50)),
    ("openai/gpt-4o", ModelPrice(2.50, 10.00)),
    ("local-gguf", ModelPrice(0.0, 0.0)),
])
def test_shipped_table_matches_dated_and_prefixed_names(model: str, expected: ModelPrice) -> None:
    assert PriceTable.default().lookup(model) == expected


@pytest.mark.parametrize("model", ["mystery-model", "gpt-4ox", "gpt", "llama3:8b", ""])
def test_unknown_models_are_unpriced(model: str) -> None:
    assert PriceTable.default().lookup(model) is None


def test_override_file_adds_replaces_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("gpt-4o-mini: {input: 1, output: 2}\n"
                    "my-finetune: {input: 0.3, output: 1.2}\n"
                    "azure-deploy: gpt-4o\n"
                    "llama3: {input: 0, output: 0}\n", encoding="utf-8")
    table = load_price_table(path)
    assert table.lookup("gpt-4o-mini-2024-07-18") == ModelPrice(1.0, 2.0)
    assert table.lookup("my-finetune") == ModelPrice(0.3, 1.2)
    assert table.lookup("azure-deploy") == ModelPrice(2.50, 10.00)
    assert table.lookup("azure-deploy-2") == ModelPrice(2.50, 10.00)  # alias found by prefix, then resolved
    assert table.lookup("llama3:8b") == ModelPrice(0.0, 0.0)
    assert table.lookup("gpt-4o") == ModelPrice(2.50, 10.00)  # untouched entries stay


def test_json_price_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m": {"input": 3, "output": 4}}), encoding="utf-8")
    assert load_price_table(path).lookup("m") == ModelPrice(3.0, 4.0)


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


def test_cost_splits_live_spend_from_replay_savings() -> None:
    usage_agent = ModelUsage("agent", "gpt-4o-mini")
    usage_agent.add(1000, 200, cached=False)
    usage_agent.add(3000, 100, cached=True)
    usage_judge = ModelUsage("evaluator", "gpt-4o")
    usage_judge.add(2000, 50, cached=False)
    unknown = ModelUsage("client", "mystery")
    unknown.add(500, 500, cached=False)
    result = ScenarioResult("s", "f.json::s", "f.json", "passed", 2, score=3,
                            usage=[usage_agent, usage_judge, unknown])
    cost = scenario_cost(result.to_dict(), PriceTable.default())
    assert cost.spent_usd == pytest.approx((1000 * 0.15 + 200 * 0.60 + 2000 * 2.50 + 50 * 10.00) / 1e6)
    assert cost.saved_usd == pytest.approx((3000 * 0.15 + 100 * 0.60) / 1e6)
    assert cost.unpriced_models == ("mystery",)


def test_unused_unknown_model_is_not_flagged() -> None:
    cost = scenario_cost({"usage": [{"role": "agent", "model": "mystery", "live_calls": 0, "cached_calls": 0}]},
                         PriceTable.default())
    assert cost.unpriced_models == () and cost.spent_usd == 0
