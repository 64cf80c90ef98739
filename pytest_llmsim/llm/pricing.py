"""LLM prices and what a scenario's calls cost.

Where a model's price comes from, first match wins:

1. **The override file** (ini ``llmsim_prices``, JSON or YAML), USD per million tokens::

       gpt-4o-mini: {input: 0.15, output: 0.60}
       my-finetune: {input: 0.30, output: 1.20}
       azure-deployment-7: gpt-4o          # an alias: priced like gpt-4o (from this file or the database)

   Its names match exactly, as an alias, or as the longest name the model name starts with followed by ``-``,
   ``:`` or ``@`` (``my-finetune-v2`` is priced as ``my-finetune``); a provider prefix such as ``openai/`` is
   ignored. Cached input tokens are priced at its ``input`` rate (the file has no cached rate).
2. **The local model** (``local_model.LOCAL_MODEL_NAME``, served by the bundled llama.cpp backend) costs 0.
3. **genai-prices**, the pydantic team's maintained price database, as shipped in the installed package: its
   data snapshot only, never its auto-update (no network access at run time; upgrading the package updates
   the prices). The run summary names the version.

A model matching nothing is *unpriced*: it costs 0 and is named in the run summary, so a missing price is never
mistaken for a free model.

Which genai-prices provider prices a model: the plugin talks to an OpenAI-compatible endpoint and only has the
model name, so the provider comes from the name. ``provider/model`` (``openai/gpt-4o``, ``anthropic/claude-
3-5-sonnet``, ``openrouter/openai/gpt-4o``) uses that provider when genai-prices knows it (with its fallbacks,
e.g. ``azure`` -> ``openai``). A bare name is looked up under ``openai`` first (the API the endpoint speaks),
then under the provider genai-prices recognises from the name (``claude-*`` -> anthropic, ``gemini-*`` ->
google, ...). Dated names are matched as genai-prices lists them (``gpt-4o-mini-2024-07-18``); a date the
database does not list yet (``-2099-01-01``, ``-20990101``) falls back to the undated model, and the price's
source says so. Every summary names each model's source (``price_sources``), so a surprising match shows.

genai-prices prices by request date (its prices change on given days): a table takes the date once, when it
is made (once per process), and prices every call at that date. A recording priced as a baseline uses today's
prices too, so a cost delta measures tokens, not price changes. Calls replayed from the cache cost nothing; what
they would have cost live is reported as *saved*.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pytest_llmsim.errors import ConfigError
from pytest_llmsim.llm.local_model import LOCAL_MODEL_NAME

if TYPE_CHECKING:  # genai-prices loads pydantic: imported on the first price looked up, not with the plugin
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, Provider

TOKENS_PER_PRICE_UNIT = 1_000_000
DATABASE = f"genai-prices {version('genai-prices')}"
LOCAL_SOURCE = "local model"



@cache
def _snapshot() -> DataSnapshot:
    """The bundled data only: a snapshot of our own, so an auto-update started elsewhere in the process
    (``genai_prices.UpdatePrices`` swaps the package's global snapshot) never reaches this plugin's prices."""
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)

_DEFAULT_PROVIDER = "openai"
_SEPARATORS = ("-", ":", "@")
_MAX_ALIAS_DEPTH = 8
_DATE_SUFFIX = re.compile(r"-(?:20\d{2}-\d{2}-\d{2}|20\d{6})$")


@dataclass(frozen=True)
class ModelPrice:
    """An override file's price: USD per million tokens."""

    input: float
    output: float


@dataclass(frozen=True)
class PriceMatch:
    """One model's price and where it came from: a flat price (override file, local model) or a genai-prices
    model of a provider."""

    source: str
    flat: ModelPrice | None = None
    provider: Provider | None = None
    database_model: ModelInfo | None = None
    # date -> USD per token (uncached input, cached input, output) when the database's price is linear in the
    # tokens (no tiers, no per-request fee); None when it is not. See ``_linear_rates``.
    _rates: dict[datetime, tuple[Decimal, Decimal, Decimal] | None] = field(
        default_factory=dict, compare=False, repr=False)

    def cost(self, calls: int, input_tokens: int, output_tokens: int, cached_input_tokens: int,
             at: datetime) -> float:
        """USD for ``calls`` calls totalling these tokens; ``cached_input_tokens`` (part of ``input_tokens``)
        were read from the provider's prompt cache.

        genai-prices prices one request (tiers by prompt size, per-request fees), so the database prices the
        average call and multiplies: exact when the calls fall in one tier."""
        input_tokens, output_tokens = max(int(input_tokens), 0), max(int(output_tokens), 0)
        cached_input_tokens = min(max(int(cached_input_tokens), 0), input_tokens)
        if not (input_tokens or output_tokens):
            return 0.0
        if self.provider is None or self.database_model is None:
            flat = self.flat or ModelPrice(0.0, 0.0)
            return (input_tokens * flat.input + output_tokens * flat.output) / TOKENS_PER_PRICE_UNIT
        if at not in self._rates:
            self._rates[at] = self._linear_rates(at)
        rates = self._rates[at]
        if rates is not None:  # the same figure as below, without genai-prices' ~0.2 ms per call
            uncached, cached, output = rates
            return float((input_tokens - cached_input_tokens) * uncached + cached_input_tokens * cached
                         + output_tokens * output)
        return float(self._database_price(calls, input_tokens, output_tokens, cached_input_tokens, at))

    def _database_price(self, calls: int, input_tokens: int, output_tokens: int, cached_input_tokens: int,
                        at: datetime) -> Decimal:
        from genai_prices.types import Usage

        assert self.provider is not None and self.database_model is not None
        calls = max(int(calls), 1)
        usage = Usage(input_tokens=Decimal(input_tokens) / calls, output_tokens=Decimal(output_tokens) / calls,
                      cache_read_tokens=Decimal(cached_input_tokens) / calls)
        price = self.database_model.calc_price(usage, self.provider, genai_request_timestamp=at)
        return price.total_price * calls

    def _linear_rates(self, at: datetime) -> tuple[Decimal, Decimal, Decimal] | None:
        """USD per uncached input token, cached input token and output token, when the database's price at
        ``at`` is linear in them: no tiered price, nothing charged for a call without tokens, and a mixed call
        priced as the sum of its parts (checked). None otherwise: every call then goes to genai-prices."""
        from genai_prices.types import TieredPrices

        assert self.database_model is not None
        if any(isinstance(value, TieredPrices) for value in vars(self.database_model.get_prices(at)).values()):
            return None
        unit = TOKENS_PER_PRICE_UNIT
        uncached = self._database_price(1, unit, 0, 0, at) / unit
        cached = self._database_price(1, unit, 0, unit, at) / unit
        output = self._database_price(1, 0, unit, 0, at) / unit
        mixed = self._database_price(1, 3 * unit, 2 * unit, unit, at)
        if self._database_price(1, 0, 0, 0, at) != 0 or mixed != (2 * uncached + cached + 2 * output) * unit:
            return None
        return uncached, cached, output


class PriceTable:
    """Model name -> price: the override file's entries, the local model, then the genai-prices database.

    ``origin`` names the override file in the price sources."""

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None, aliases: Mapping[str, str] | None = None,
                 *, origin: str = "") -> None:
        self.prices = {_normalise(name): price for name, price in (prices or {}).items()}
        self.aliases = {_normalise(name): str(target).strip() for name, target in (aliases or {}).items()}
        self.origin = origin
        self.at = datetime.now(tz=UTC)  # one date for every call this table prices
        self._matches: dict[str, PriceMatch | None] = {}

    @classmethod
    def default(cls) -> PriceTable:
        """No override file: the local model and the database."""
        return cls()

    def match(self, model: str) -> PriceMatch | None:
        """The price of ``model`` and its source; None when nothing prices it."""
        if model not in self._matches:
            self._matches[model] = self._resolve(str(model))
        return self._matches[model]

    def _resolve(self, model: str) -> PriceMatch | None:
        override = f"override file {self.origin}" if self.origin else "override file"
        name, via, target = _normalise(model), "", model  # target: the name as written, provider prefix kept
        for _ in range(_MAX_ALIAS_DEPTH):
            if name in self.prices:
                return PriceMatch(override, flat=self.prices[name])
            alias = name if name in self.aliases else self._longest_prefix(name)
            if alias is None:
                break
            if alias in self.prices:
                return PriceMatch(override, flat=self.prices[alias])
            via, target = alias, self.aliases[alias]
            name = _normalise(target)
        else:
            return None  # an alias loop
        found = _local_price(name) or _database_price(target)
        if found is None or not via:
            return found
        return PriceMatch(f"{found.source} via the alias {via} -> {target} in {override}", found.flat,
                          found.provider, found.database_model)

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


def _local_price(name: str) -> PriceMatch | None:
    return PriceMatch(LOCAL_SOURCE, flat=ModelPrice(0.0, 0.0)) if name == LOCAL_MODEL_NAME else None


def _database_price(model: str) -> PriceMatch | None:
    """The genai-prices match for ``model`` (see the module docstring for the provider order)."""
    ref = model.strip().lower()
    bare = ref.rsplit("/", 1)[-1]
    if not bare:
        return None
    attempts: list[tuple[str | None, str]] = []
    if "/" in ref:
        prefix, _, rest = ref.partition("/")
        from genai_prices.data_snapshot import find_provider_by_id

        if find_provider_by_id(_snapshot().providers, prefix) is not None:
            attempts.append((prefix, rest))
        attempts.append((None, ref))
    attempts += [(_DEFAULT_PROVIDER, bare), (None, bare)]
    found = _first_database_match(attempts)
    if found is not None:
        return PriceMatch(f"{DATABASE} ({found[0].id} {found[1].id})", provider=found[0], database_model=found[1])
    undated = _DATE_SUFFIX.sub("", bare)
    found = _first_database_match([(_DEFAULT_PROVIDER, undated), (None, undated)]) if undated != bare else None
    if found is not None:
        return PriceMatch(f"{DATABASE} ({found[0].id} {found[1].id}; {bare}: date not in the database)",
                          provider=found[0], database_model=found[1])
    return None


def _first_database_match(attempts: Iterable[tuple[str | None, str]]) -> tuple[Provider, ModelInfo] | None:
    """The first (provider id or None = recognised from the name, model name) genai-prices knows."""
    for provider_id, name in attempts:
        try:
            return _snapshot().find_provider_model(name, None, provider_id, None)
        except LookupError:
            continue
    return None


def _display_path(path: Path) -> str:
    """The override file as the summary names it: relative to the working directory when under it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return str(path) if relative.startswith("..") else relative


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
    """The price table: the override file at ``path`` (if given) before the local model and the database."""
    if path is None:
        return PriceTable.default()
    prices, aliases = load_price_file(path)
    return PriceTable(prices, aliases, origin=_display_path(path))


@dataclass(frozen=True)
class ScenarioCost:
    """What one scenario's calls cost live (``spent_usd``) and would have cost had replays been live, and
    where each used model's price came from (``price_sources``: model -> source)."""

    spent_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced_models: tuple[str, ...] = ()
    price_sources: dict[str, str] = field(default_factory=dict)


def scenario_cost(result: Mapping[str, Any], table: PriceTable) -> ScenarioCost:
    """Cost of a ``ScenarioResult.to_dict()`` from its per-(role, model) usage."""
    return usage_cost(result.get("usage") or [], table)


def usage_cost(usage: Iterable[Mapping[str, Any]], table: PriceTable) -> ScenarioCost:
    """Cost of ``ModelUsage`` dicts (entries written before a field existed read it as 0)."""
    spent: list[float] = []
    saved: list[float] = []
    unpriced: set[str] = set()
    sources: dict[str, str] = {}
    for entry in usage:
        model = str(entry.get("model", ""))
        live, replayed = int(entry.get("live_calls") or 0), int(entry.get("cached_calls") or 0)
        found = table.match(model)
        if found is None:
            if live or replayed:
                unpriced.add(model)
            continue
        if live or replayed:
            sources[model] = found.source
        spent.append(found.cost(live, entry.get("prompt_tokens") or 0, entry.get("completion_tokens") or 0,
                                entry.get("cached_input_tokens") or 0, table.at))
        saved.append(found.cost(replayed, entry.get("cached_prompt_tokens") or 0,
                                entry.get("cached_completion_tokens") or 0,
                                entry.get("replayed_cached_input_tokens") or 0, table.at))
    return ScenarioCost(math.fsum(spent), math.fsum(saved), tuple(sorted(unpriced)), dict(sorted(sources.items())))


def sources_text(sources: Mapping[str, str]) -> str:
    """``gpt-4o-mini from genai-prices 0.2.3 (openai gpt-4o-mini); my-ft from override file prices.yaml``."""
    return "; ".join(f"{model} from {source}" for model, source in sources.items())
