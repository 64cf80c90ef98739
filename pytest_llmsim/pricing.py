"""LLM prices and what a scenario's calls cost.

Prices are USD per million tokens, input (prompt) and output (completion). The shipped table covers the common
OpenAI models at their standard (non-batch) rates; models served by the bundled local backend cost 0. A price
file (JSON or YAML) extends or overrides it::

    gpt-4o-mini: {input: 0.15, output: 0.60}
    my-finetune: {input: 0.30, output: 1.20}
    azure-deployment-7: gpt-4o          # an alias: priced like gpt-4o

Lookup: exact name, then an alias, then the longest table name that the model name starts with followed by
``-``, ``:`` or ``@`` (so ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``, not ``gpt-4o``); a provider
prefix such as ``openai/`` is ignored. A model matching nothing is *unpriced*: it costs 0 and is named in the
run summary so a missing price is never mistaken for a free model.

Calls replayed from the cache cost nothing; what they would have cost live is reported as *saved*.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens."""

    input: float
    output: float


# Standard-tier list prices (USD per 1M tokens) as published by OpenAI, 2025. Dated snapshots are priced by
# prefix; the few snapshots whose price differs from their family's are listed explicitly.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-2024-05-13": ModelPrice(5.00, 15.00),
    "chatgpt-4o-latest": ModelPrice(5.00, 15.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4-turbo": ModelPrice(10.00, 30.00),
    "gpt-4-1106-preview": ModelPrice(10.00, 30.00),
    "gpt-4-0125-preview": ModelPrice(10.00, 30.00),
    "gpt-4": ModelPrice(30.00, 60.00),
    "gpt-4-32k": ModelPrice(60.00, 120.00),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "gpt-3.5-turbo-instruct": ModelPrice(1.50, 2.00),
    "o1": ModelPrice(15.00, 60.00),
    "o1-mini": ModelPrice(1.10, 4.40),
    "o3": ModelPrice(2.00, 8.00),
    "o3-mini": ModelPrice(1.10, 4.40),
    "o4-mini": ModelPrice(1.10, 4.40),
    # The bundled local backend (llama.cpp serving the GGUF model under this alias) costs nothing.
    "local-gguf": ModelPrice(0.0, 0.0),
}

_SEPARATORS = ("-", ":", "@")
_MAX_ALIAS_DEPTH = 8


class PriceTable:
    """Model name -> price, with aliases and prefix matching for dated or tagged model names."""

    def __init__(self, prices: Mapping[str, ModelPrice], aliases: Mapping[str, str] | None = None) -> None:
        self.prices = {_normalise(name): price for name, price in prices.items()}
        self.aliases = {_normalise(name): _normalise(target) for name, target in (aliases or {}).items()}

    @classmethod
    def default(cls) -> PriceTable:
        return cls(DEFAULT_PRICES)

    def overridden_by(self, prices: Mapping[str, ModelPrice], aliases: Mapping[str, str]) -> PriceTable:
        """A new table: this one with ``prices`` and ``aliases`` added or replacing same-named entries."""
        merged_prices = dict(self.prices)
        merged_aliases = dict(self.aliases)
        for name, price in prices.items():
            merged_prices[_normalise(name)] = price
            merged_aliases.pop(_normalise(name), None)
        for name, target in aliases.items():
            merged_aliases[_normalise(name)] = _normalise(target)
            merged_prices.pop(_normalise(name), None)
        return PriceTable(merged_prices, merged_aliases)

    def lookup(self, model: str) -> ModelPrice | None:
        name = _normalise(model)
        for _ in range(_MAX_ALIAS_DEPTH):
            if name in self.prices:
                return self.prices[name]
            if name in self.aliases:
                name = self.aliases[name]
                continue
            prefix = self._longest_prefix(name)
            if prefix is None:
                return None
            if prefix in self.prices:
                return self.prices[prefix]
            name = self.aliases[prefix]
        return None

    def _longest_prefix(self, name: str) -> str | None:
        best: str | None = None
        for known in (*self.prices, *self.aliases):
            if len(name) > len(known) and name.startswith(known) and name[len(known)] in _SEPARATORS:
                if best is None or len(known) > len(best):
                    best = known
        return best


def _normalise(model: str) -> str:
    name = str(model).strip().lower()
    return name.rsplit("/", 1)[-1] if "/" in name else name


def load_price_file(path: Path) -> tuple[dict[str, ModelPrice], dict[str, str]]:
    """Read a price file: a mapping of model -> {input, output} (USD per 1M tokens) or model -> alias target.

    Raises ConfigError naming the file and the offending entry.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"price file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"price file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"price file {path}: expected a mapping of model name -> {{input, output}}, "
                          f"got {type(data).__name__}")
    prices: dict[str, ModelPrice] = {}
    aliases: dict[str, str] = {}
    for name, entry in data.items():
        where = f"price file {path}: model {name!r}"
        if isinstance(entry, str):
            aliases[str(name)] = entry
            continue
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise ConfigError(f"{where}: expected {{input: USD per 1M tokens, output: USD per 1M tokens}} "
                              f"or the name of another model, got {entry!r}")
        values = []
        for side in ("input", "output"):
            value = entry[side]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"{where}: {side} must be a number >= 0 (USD per 1M tokens), got {value!r}")
            values.append(float(value))
        prices[str(name)] = ModelPrice(*values)
    return prices, aliases


def load_price_table(path: Path | None = None) -> PriceTable:
    """The shipped table, overridden by the price file at ``path`` if given."""
    table = PriceTable.default()
    if path is None:
        return table
    return table.overridden_by(*load_price_file(path))


@dataclass(frozen=True)
class ScenarioCost:
    """What one scenario's calls cost live (``spent_usd``) and would have cost had replays been live."""

    spent_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced_models: tuple[str, ...] = ()


def scenario_cost(result: Mapping[str, Any], table: PriceTable) -> ScenarioCost:
    """Cost of a ``ScenarioResult.to_dict()`` from its per-(role, model) usage."""
    return usage_cost(result.get("usage") or [], table)


def usage_cost(usage: Iterable[Mapping[str, Any]], table: PriceTable) -> ScenarioCost:
    spent: list[float] = []
    saved: list[float] = []
    unpriced: set[str] = set()
    for entry in usage:
        model = str(entry.get("model", ""))
        price = table.lookup(model)
        if price is None:
            if entry.get("live_calls") or entry.get("cached_calls"):
                unpriced.add(model)
            continue
        spent.append(_tokens_cost(entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0), price))
        saved.append(_tokens_cost(entry.get("cached_prompt_tokens", 0), entry.get("cached_completion_tokens", 0),
                                  price))
    return ScenarioCost(math.fsum(spent), math.fsum(saved), tuple(sorted(unpriced)))


def _tokens_cost(prompt_tokens: int, completion_tokens: int, price: ModelPrice) -> float:
    return (int(prompt_tokens) * price.input + int(completion_tokens) * price.output) / TOKENS_PER_PRICE_UNIT
