"""The report options (results file, histogram, prices, suite gates): declared and parsed in one place.

Kept apart from the reporting hooks so the declarative option table can absorb them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import options
from .errors import ConfigError
from .options import IniKey
from .pricing import PriceTable, load_price_table, scenario_cost
from .summary import Gates

REPORT_INI_KEYS = [
    IniKey("llmsim_results", "Write one record per scenario and the run summary to this file; the format "
           "follows the extension: .json, .csv or .ndjson (relative to rootdir).", ""),
    IniKey("llmsim_histogram", "Draw the score distribution to this PNG file (needs matplotlib).", ""),
    IniKey("llmsim_prices", "Price file (JSON or YAML mapping model -> {input, output} in USD per 1M tokens, "
           "or model -> another model's name) extending or overriding the shipped price table.", ""),
    IniKey("llmsim_min_mean_score", "Suite gate: the session fails if the mean score is below this (1-3).", ""),
    IniKey("llmsim_min_pass_rate", "Suite gate: the session fails if a smaller share of scenarios passes "
           "(a fraction such as 0.9, or a percentage such as 90%).", ""),
    IniKey("llmsim_max_cost_usd", "Suite gate: the session fails if live LLM calls cost more than this (USD).", ""),
]

PRICES_KEY = pytest.StashKey[PriceTable]()
WORKER_PRICES = "llmsim_prices_path"  # workerinput key: the price file the controller resolved


def add_report_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmsim")
    group.addoption("--llmsim-results", dest="llmsim_results", metavar="PATH",
                    help="Write per-scenario results and the run summary to PATH (.json, .csv or .ndjson).")
    group.addoption("--llmsim-histogram", dest="llmsim_histogram", metavar="PATH",
                    help="Draw the score distribution to a PNG file (needs matplotlib).")
    group.addoption("--llmsim-prices", dest="llmsim_prices", metavar="PATH",
                    help="Price file extending or overriding the shipped price table (JSON or YAML).")
    group.addoption("--llmsim-min-mean-score", dest="llmsim_min_mean_score", metavar="X",
                    help="Suite gate: fail the session if the mean score is below X.")
    group.addoption("--llmsim-min-pass-rate", dest="llmsim_min_pass_rate", metavar="P",
                    help="Suite gate: fail the session if the pass rate is below P (0.9 or 90%%).")
    group.addoption("--llmsim-max-cost-usd", dest="llmsim_max_cost_usd", metavar="C",
                    help="Suite gate: fail the session if live LLM calls cost more than C US dollars.")
    for key in REPORT_INI_KEYS:
        parser.addini(key.name, key.help, type=key.type, default=key.default)  # type: ignore[arg-type]


# -- option resolution ----------------------------------------------------------------------------------------
def path_option(config: pytest.Config, name: str) -> Path | None:
    """A path from the command line (relative to the invocation directory) or the ini file (to rootdir)."""
    raw = config.getoption(name, default=None)
    if raw:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else config.invocation_params.dir / path
    raw = config.getini(name)
    return options.resolve_path(config, str(raw)) if raw else None


def _number_option(config: pytest.Config, name: str, *, percent: bool = False) -> tuple[float | None, str]:
    raw = options.option_or_ini(config, name)
    if raw in (None, ""):
        return None, ""
    text = str(raw).strip()
    try:
        return float(text[:-1] if percent and text.endswith("%") else text), text
    except ValueError:
        raise pytest.UsageError(f"llmsim: {name} must be a number, got {text!r}") from None


def gates_from_config(config: pytest.Config) -> Gates:
    mean, _ = _number_option(config, "llmsim_min_mean_score")
    if mean is not None and not 1 <= mean <= 3:
        raise pytest.UsageError(f"llmsim: llmsim_min_mean_score must be between 1 and 3, got {mean:g}")
    rate, raw_rate = _number_option(config, "llmsim_min_pass_rate", percent=True)
    if rate is not None:
        if raw_rate.endswith("%"):
            rate /= 100
        elif rate > 1:
            raise pytest.UsageError(f"llmsim: llmsim_min_pass_rate must be a fraction between 0 and 1 or a "
                                    f"percentage such as 90%, got {raw_rate!r}")
        if not 0 <= rate <= 1:
            raise pytest.UsageError(f"llmsim: llmsim_min_pass_rate must be between 0 and 100%, got {raw_rate!r}")
    cost, _ = _number_option(config, "llmsim_max_cost_usd")
    if cost is not None and cost < 0:
        raise pytest.UsageError(f"llmsim: llmsim_max_cost_usd must be >= 0, got {cost:g}")
    return Gates(min_mean_score=mean, min_pass_rate=rate, max_cost_usd=cost)


def _prices_path(config: pytest.Config) -> Path | None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_PRICES in workerinput:
        return Path(workerinput[WORKER_PRICES]) if workerinput[WORKER_PRICES] else None
    return path_option(config, "llmsim_prices")


def price_table(config: pytest.Config) -> PriceTable:
    """The run's price table (shipped table + price file), loaded once per process."""
    table = config.stash.get(PRICES_KEY, None)
    if table is None:
        try:
            table = load_price_table(_prices_path(config))
        except ConfigError as exc:
            raise pytest.UsageError(f"llmsim: {exc}") from None
        config.stash[PRICES_KEY] = table
    return table


def scenario_cost_usd(config: pytest.Config, result: dict[str, Any]) -> str:
    """Spent cost of one scenario's live calls, as the JUnit ``cost_usd`` property (fixed-point, 8 decimals)."""
    return f"{scenario_cost(result, price_table(config)).spent_usd:.8f}"
