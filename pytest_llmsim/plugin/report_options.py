"""The report options' values as the reports use them: gates, output paths, the baseline and the price table.

The options themselves are rows of the option table (``options.OPTIONS``), resolved once at configure time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.llm.pricing import PriceTable, load_price_table, scenario_cost
from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.reporting.baseline import Baseline, load_baseline
from pytest_llmsim.reporting.summary import Gates

PRICES_KEY = pytest.StashKey[PriceTable]()
BASELINE_KEY = pytest.StashKey[Baseline]()
WORKER_PRICES = "llmsim_prices_path"  # workerinput key: the price file the controller resolved
WORKER_BASELINE = "llmsim_baseline_path"  # workerinput keys: the baseline the controller resolved, and how the
WORKER_BASELINE_SHOWN = "llmsim_baseline_shown"  # reports name it (relative to the invocation directory)
GATE_ALL, GATE_REGRESSIONS = "all", "regressions"


def resolved_options(config: pytest.Config) -> ResolvedOptions:
    from pytest_llmsim.plugin.session import SESSION_KEY

    return config.stash[SESSION_KEY].options


def path_option(config: pytest.Config, name: str) -> Path | None:
    """A path option (command line: relative to the invocation directory; ini: to the ini file's directory)."""
    value: Path | None = resolved_options(config)[name]
    return value


def gates_from_config(config: pytest.Config) -> Gates:
    """The suite gates and the baseline gates as set (the report plugin drops the baseline gates when no
    baseline is given)."""
    resolved = resolved_options(config)
    return Gates(min_mean_score=resolved["llmsim_min_mean_score"], min_pass_rate=resolved["llmsim_min_pass_rate"],
                 max_cost_usd=resolved["llmsim_max_cost_usd"],
                 fail_on_regression=bool(resolved["llmsim_fail_on_regression"]),
                 max_score_drop=resolved["llmsim_max_score_drop"], min_pass_hat_k=resolved["llmsim_min_pass_hat_k"],
                 gate=gate_mode(config),
                 significant_regression_alpha=resolved["llmsim_fail_on_significant_regression"])


def gate_mode(config: pytest.Config) -> str:
    """``llmsim_gate``: ``all`` (any failed item fails the run) or ``regressions`` (known failures do not); the
    latter without a baseline is a usage error, not a silent pass."""
    resolved = resolved_options(config)
    mode: str = resolved["llmsim_gate"]
    if mode == GATE_REGRESSIONS and resolved["llmsim_baseline"] is None:
        raise pytest.UsageError(
            "llmsim: llmsim_gate=regressions (--llmsim-gate) needs a baseline to tell a known failure from a new "
            "one: give --llmsim-baseline (e.g. the main branch's JSON export or recordings directory), or use "
            "--llmsim-gate=all")
    return mode


def baseline_from_config(config: pytest.Config) -> Baseline | None:
    """The baseline ``llmsim_baseline`` names, loaded now (None: not set); a bad one is a usage error. Loaded
    once per process (the report plugin and the regressions gate share it); an xdist worker loads the file the
    controller resolved."""
    cached = config.stash.get(BASELINE_KEY, None)
    if cached is not None:
        return cached
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(WORKER_BASELINE):
        path: Path | None = Path(workerinput[WORKER_BASELINE])
    else:
        path = path_option(config, "llmsim_baseline")
    if path is None:
        return None
    try:
        baseline = load_baseline(path, price_table(config))
    except ConfigError as exc:
        raise pytest.UsageError(f"llmsim: {exc}") from None
    try:
        shown = path.relative_to(config.invocation_params.dir).as_posix()
    except ValueError:
        shown = ""
    if workerinput is not None and workerinput.get(WORKER_BASELINE_SHOWN):
        shown = workerinput[WORKER_BASELINE_SHOWN]
    if shown:
        baseline = dataclasses.replace(baseline, shown_as=shown)
    config.stash[BASELINE_KEY] = baseline
    return baseline


def _prices_path(config: pytest.Config) -> Path | None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_PRICES in workerinput:
        return Path(workerinput[WORKER_PRICES]) if workerinput[WORKER_PRICES] else None
    return path_option(config, "llmsim_prices")


def price_table(config: pytest.Config) -> PriceTable:
    """The run's price table (price file, local model, genai-prices), loaded once per process."""
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


def local_judge(config: pytest.Config, records: Iterable[ScenarioRecord]) -> dict[str, Any] | None:
    """``RunSummary.local_judge``: the judge's model file and its recorded calibration when the judge is a local
    model; None when it is not. The judge is local when no endpoint is configured, unless this run's verdicts
    all came from another model (a replay of recordings made against an API takes their judge model)."""
    from pytest_llmsim.llm.local_model import BUNDLED_MODEL_FILE, LOCAL_MODEL_NAME, judge_calibration

    resolved = resolved_options(config)
    if not resolved.local:
        return None
    judges = {usage.model for record in records for usage in record.result.usage if usage.role == "evaluator"}
    if judges and LOCAL_MODEL_NAME not in judges:
        return None
    configured: Path | None = resolved["llmsim_local_model"]
    model = configured.name if configured is not None else BUNDLED_MODEL_FILE
    calibration = judge_calibration(model)
    return {"model": model, "bundled": configured is None,
            "calibration": calibration.to_dict() if calibration is not None else None}


def recorded_judge_gate(judge: dict[str, Any] | None, min_accuracy: float | None) -> str | None:
    """The judge gate's missed line when no calibration set ran and the local judge's recorded accuracy is below
    ``min_accuracy``; None when met or not applicable (no gate, no local judge, no recorded figure)."""
    if min_accuracy is None or not judge or not isinstance(judge.get("calibration"), dict):
        return None
    calibration = judge["calibration"]
    if calibration["accuracy"] + 1e-9 >= min_accuracy:
        return None
    return (f"judge accuracy {calibration['accuracy']:.1%} ({calibration['agreed']} of {calibration['cases']} on the "
            f"shipped calibration set, recorded for the {'bundled ' if judge.get('bundled') else ''}local model "
            f"{judge['model']}: `{calibration['command']}`, {calibration['measured']}; no calibration set given) is "
            f"below the minimum {min_accuracy:.1%} (llmsim_min_judge_accuracy)")
