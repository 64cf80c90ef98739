"""The option table: every flag and ini key of pytest-llmsim, declared once, resolved once.

Why one module: the table is the one place an option is declared; the rows, the value parsers they name and the
resolution into ``ResolvedOptions`` must be read together to know what a setting means and where it came from.

Each ``Option`` row names its ini key, command-line flag, environment variable, type and bounds, default,
local-model default, and help text. ``plugin.options`` registers the rows with pytest and reads them
once, at ``pytest_configure``, into a frozen ``ResolvedOptions`` that every other part reads (with where each
value came from); ``build_settings`` turns that into the engine's ``RunSettings``. The README's configuration
table is generated from the same rows (``markdown_table``; ``tests/plugin/test_docs.py`` keeps them in step).

Precedence, highest first: command line, environment variable (rows that name one; pytest and ``llmsim`` read
the same ones: ``config.resolve``), ini file, local-model default (only when no endpoint is configured and the
user set the option nowhere), default. Per-scenario fields (``min_score``, ``max_turns``, ``timeout``, role
overrides) beat all of these.

Paths given on the command line or in the environment are relative to the directory pytest was started in;
paths in the ini file are relative to the ini file's directory (the rootdir when there is no ini file), as
pytest's own ``paths`` ini values are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_llmsim.errors import ConfigError
from pytest_llmsim.model.settings import (
    ROLES,
    EndpointSettings,
    RecordMode,
    RoleSettings,
    RunSettings,
)
from pytest_llmsim.model.shards import parse_shard

DEFAULT_MODEL = "gpt-4o-mini"
HTTP_BACKENDS = ("auto", "aiohttp", "httpx")


@dataclass(frozen=True)
class Option:
    """One row of the table. ``default`` and ``local_default`` are written as a user would write them."""

    ini: str
    help: str
    default: str | list[str] = ""
    flag: str | None = None
    kind: str = "str"  # str | int | float | rate | path | lines | choice | bool | shard | cuts
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    local_default: str | None = None
    env: str | None = None
    metavar: str | None = None
    shown_default: str | None = None  # the README's wording when the default is not a plain value
    pytest: bool = True  # False: only ``llmsim`` and its service read it; pytest registers the ini key, no more
    const: str | None = None  # the flag's value when given bare (``--flag`` = ``--flag=const``); ``true`` too

    @property
    def dest(self) -> str:
        return self.ini


def _role_rows() -> list[Option]:
    defaults = {
        "agent": ("agent.j2", "0.3", "300", "64"),
        "client": ("client.j2", "0.7", "150", "40"),
        "evaluator": ("evaluator.j2", "0.0", "300", "120"),
    }
    rows = []
    for role, (template, temperature, max_tokens, local_max_tokens) in defaults.items():
        rows += [
            Option(f"llmsim_{role}_model", f"Model of the {role} role (default: llmsim_model).",
                   flag=f"--llmsim-{role}-model", metavar="NAME"),
            Option(f"llmsim_{role}_template", f"Prompt template of the {role} role.", template),
            Option(f"llmsim_{role}_temperature", f"Temperature of the {role} role.", temperature, kind="float",
                   low=0, high=2),
            Option(f"llmsim_{role}_max_tokens", f"Max tokens per reply of the {role} role.", max_tokens,
                   kind="int", low=1, local_default=local_max_tokens),
        ]
    return rows


OPTIONS: tuple[Option, ...] = (
    Option("llmsim_paths", "Paths (dirs, files or globs, relative to rootdir) whose .json/.yaml/.yml files are "
           "scenario files.", ["scenarios"], kind="lines"),
    Option("llmsim_transcripts", "Paths (dirs, files or globs, relative to rootdir) whose .json/.jsonl files are "
           "recorded conversations, scored by the metrics without a simulation.", [], kind="lines",
           shown_default="(none)"),
    Option("llmsim_prompts_dir", "Directory of the jinja2 prompt templates.", "prompts", kind="path"),
    Option("llmsim_cache_dir", "Directory of the LLM call cache.", ".llmsim_cache", flag="--llmsim-cache-dir",
           kind="path", metavar="DIR"),
    Option("llmsim_record_mode", "Record mode: once (replay hits, record misses, rewrite a changed recording), "
           "changed (pull requests: replay unchanged conversations, continue changed ones live on a configured "
           "endpoint and judge them, rewriting their recordings; with no endpoint configured they are unjudged "
           "errors), new (record only scenarios without a recording, never change one), none (replay only, a miss "
           "is an error), all (call everything, overwrite).", "once", flag="--llmsim-record", kind="choice",
           choices=tuple(m.value for m in RecordMode), metavar="MODE"),
    Option("llmsim_recordings", "Directory of the readable recordings, one YAML file per scenario, replayed before "
           "the cache (`off`: no recordings, only the cache).", "recordings", flag="--llmsim-recordings", kind="path",
           metavar="DIR"),
    Option("llmsim_match_endpoint", "Replay a recording only for the endpoint it was recorded against (default: "
           "any endpoint, so CI replays without a key or base URL).", "false", kind="bool"),
    Option("llmsim_base_url", "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (empty: OpenAI when an "
           "API key is set, else the local model).", flag="--llmsim-base-url", env="OPENAI_BASE_URL",
           metavar="URL"),
    Option("llmsim_api_key_env", "Environment variable holding the API key.", "OPENAI_API_KEY"),
    Option("llmsim_endpoint_id", "Identity of the endpoint in cache keys (default: its URL without credentials).",
           ""),
    Option("llmsim_model", "Model for every role unless a role sets its own.", flag="--llmsim-model",
           metavar="NAME", shown_default=f"(empty: `{DEFAULT_MODEL}`, or the local model)", env="OPENAI_MODEL"),
    Option("llmsim_seed", "Seed sent with every call when a scenario has no SEED variable.", "1234",
           flag="--llmsim-seed", kind="int", metavar="N"),
    Option("llmsim_min_score", "Minimum passing score (1-3) when a scenario sets none.", "2",
           flag="--llmsim-min-score", kind="int", low=1, high=3, metavar="N"),
    Option("llmsim_max_turns", "Messages (both sides) after which a conversation stops.", "30",
           flag="--llmsim-max-turns", kind="int", low=1, metavar="N", env="MAX_TURNS"),
    Option("llmsim_timeout", "Seconds per conversation before it is stopped (and judged if the agent spoke).",
           "90", flag="--llmsim-timeout", kind="float", low=0.001, local_default="300", metavar="SECONDS",
           env="TIMEOUT_SEC"),
    Option("llmsim_request_timeout", "Seconds per LLM request, reading the whole reply included.", "30",
           flag="--llmsim-request-timeout", kind="float", low=0.001, local_default="300", metavar="SECONDS"),
    Option("llmsim_max_retries", "Retries per LLM request on 5xx, timeouts and connection errors (a 429 is "
           "retried without counting: see llmsim_rate_limit_wait).", "4",
           flag="--llmsim-max-retries", kind="int", low=0, metavar="N"),
    Option("llmsim_rate_limit_wait", "Seconds a scenario's requests may wait on a provider's rate limit in all "
           "(queued for the limiter, sitting out 429s) before it errors naming the limit; that waiting does not "
           "count against llmsim_timeout.", "600", flag="--llmsim-rate-limit-wait", kind="float", low=0.001,
           metavar="SECONDS"),
    Option("llmsim_trials", "Conversations per scenario (each with its own seed) when a scenario sets no "
           "'trials'.", "1", flag="--llmsim-trials", kind="int", low=1, high=100, metavar="K"),
    Option("llmsim_scenario_min_pass_rate", "Share of a scenario's trials that must pass for it to pass, when "
           "it sets no 'min_pass_rate' (1.0: every trial).", "1.0", kind="float", low=0, high=1),
    Option("llmsim_trial_items", "With trials, one test item per trial (name[trial-2]) instead of one per "
           "scenario.", "false", flag="--llmsim-trial-items", kind="bool"),
    Option("llmsim_judge_repeats", "Independent verdicts of each transcript (each with its own seed); the "
           "policy decides, a split is reported.", "1", flag="--llmsim-judge-repeats", kind="int", low=1, high=20,
           metavar="N"),
    Option("llmsim_judge_policy", "How repeated verdicts decide: majority (a tie goes to the lowest score), min "
           "or mean.", "majority", flag="--llmsim-judge-policy", kind="choice",
           choices=("majority", "min", "mean")),
    Option("llmsim_judge_method", "How the judge scores: verdict (a 1-3 verdict with a comment), constrained (the "
           "same under a grammar that rules out most invalid verdicts: llama.cpp, vLLM, Ollama), criteria (each "
           "scenario criterion a yes/no question: 3 all yes, 2 one no, 1 otherwise), score (the score alone under a "
           "grammar, no reason), logprobs (the score from the probabilities of 1, 2 and 3 at the score's token; "
           "needs an endpoint that returns logprobs), criteria_logprobs (the criteria questions scored by p(yes), "
           "cut like logprobs) or auto (logprobs on the local model's llama.cpp server, "
           "criteria on llama-cpp-python's, score there without criteria; verdict for an endpoint).",
           "auto", flag="--llmsim-judge-method", kind="choice",
           choices=("auto", "verdict", "constrained", "criteria", "score", "logprobs", "criteria_logprobs")),
    Option("llmsim_logprob_thresholds", "Cut-points LOW,HIGH of the logprobs judge's expected score (1 below LOW, "
           "3 from HIGH on, else 2). Empty: the ones recorded for the local model file (local_model.JUDGE_CALIBRATION"
           "), else 1.5,2.5.", flag="--llmsim-logprob-thresholds", kind="cuts", metavar="LOW,HIGH",
           shown_default="(empty: recorded for the local model, else `1.5,2.5`)"),
    Option("llmsim_judge_attempts", "Evaluator attempts before an unparsable verdict is an error.", "3",
           kind="int", low=1),
    Option("llmsim_language", "Language of the evaluator's comment.", "English", flag="--llmsim-language",
           metavar="LANG"),
    Option("llmsim_end_marker", "Text either side writes to end the call (stripped from transcripts).",
           "[END_CALL]"),
    Option("llmsim_first_speaker", "Who opens the call: client or agent.", "client", kind="choice",
           choices=("client", "agent")),
    Option("llmsim_concurrency", "Conversations in flight at once in one process.", "16",
           flag="--llmsim-concurrency", kind="int", low=1, local_default="2", metavar="N", env="CONCURRENCY"),
    Option("llmsim_rpm", "Cap on LLM requests per minute per model for the whole run, one budget shared by the "
           "xdist workers (empty: none; the provider's x-ratelimit headers are followed either way).",
           flag="--llmsim-rpm", kind="float", low=0.001, metavar="N"),
    Option("llmsim_tpm", "Cap on LLM tokens per minute per model for the whole run (a request counts its prompt, "
           "estimated before sending, plus its max_tokens, as OpenAI does), shared like llmsim_rpm (empty: none).",
           flag="--llmsim-tpm", kind="float", low=1, metavar="N"),
    Option("llmsim_http_backend", "HTTP transport of the openai client: auto (openai's aiohttp transport when "
           "aiohttp is installed, else httpx), aiohttp or httpx.", "auto", kind="choice", choices=HTTP_BACKENDS),
    Option("llmsim_local_model", "GGUF file for the local server used when no endpoint is configured (default: "
           "the bundled SmolLM2).", flag="--llmsim-local-model", kind="path", metavar="PATH"),
    Option("llmsim_evaluate", "Metrics of a scenario that lists none under 'evaluate' (one per line): judge, "
           "criteria, rules, rouge or a registered metric.", ["judge"], kind="lines"),
    Option("llmsim_agent", "The agent under test for every scenario whose own 'agent' names none: an inline "
           "mapping such as {python: \"bots.shop:ShopBot\"}, {http: {url: ...}} or {openai: {base_url: ..., "
           "model: ...}} (empty: the prompt agent).", flag="--llmsim-agent", metavar="SPEC"),
    *_role_rows(),
    Option("llmsim_chats_dir", "Write each conversation to this directory as chat_<scenario>_trial<k>.json "
           "(turns, tool calls, metrics, usage).", flag="--llmsim-chats-dir", kind="path", metavar="DIR"),
    Option("llmsim_readable", "With llmsim_chats_dir, also write a .txt of each conversation for people.", "false",
           flag="--llmsim-readable", kind="bool"),
    Option("llmsim_results", "Write one record per scenario and the run summary to this file; the format follows "
           "the extension: .json, .csv or .ndjson/.jsonl.", flag="--llmsim-results", kind="path", metavar="PATH"),
    Option("llmsim_metrics_summary", "Write the evaluation module's metrics summary JSON to this file: per metric "
           "average_score, num_evaluations, num_errors and results (score, explanation, details), with a timestamp.",
           flag="--llmsim-metrics-summary", kind="path", metavar="PATH"),
    Option("llmsim_histogram", "Draw the score distribution to this PNG file (needs the histogram extra).",
           flag="--llmsim-histogram", kind="path", metavar="PATH"),
    Option("llmsim_prices", "Price file (JSON or YAML: model -> {input, output} in USD per 1M tokens, or model -> "
           "another model's name) whose prices come before the genai-prices database (and the local model's $0).",
           flag="--llmsim-prices",
           kind="path", metavar="PATH"),
    Option("llmsim_min_mean_score", "Suite gate: the session fails if the mean score is below this (1-3).",
           flag="--llmsim-min-mean-score", kind="float", low=1, high=3, metavar="X"),
    Option("llmsim_min_pass_rate", "Suite gate: the session fails if a smaller share of scenarios passes (a "
           "fraction such as 0.9, or a percentage such as 90%).", flag="--llmsim-min-pass-rate", kind="rate",
           metavar="P"),
    Option("llmsim_min_pass_hat_k", "Suite gate: the session fails if a smaller share of scenarios than this "
           "(0-1) passed every one of its trials (pass^k).", flag="--llmsim-min-pass-hat-k", kind="float", low=0,
           high=1, metavar="X"),
    Option("llmsim_max_cost_usd", "Suite gate: the session fails if live LLM calls cost more than this (USD).",
           flag="--llmsim-max-cost-usd", kind="float", low=0, metavar="USD"),
    Option("llmsim_baseline", "Compare with this earlier run: a JSON export (--llmsim-results) or a recordings "
           "directory (e.g. the main branch's).", flag="--llmsim-baseline", kind="path", metavar="PATH"),
    Option("llmsim_fail_on_regression", "Baseline gate: the session fails if any scenario's score dropped or it "
           "newly fails.", "false", flag="--llmsim-fail-on-regression", kind="bool"),
    Option("llmsim_max_score_drop", "Baseline gate: the session fails if the mean score dropped by more than this.",
           flag="--llmsim-max-score-drop", kind="float", low=0, metavar="X"),
    Option("llmsim_fail_on_significant_regression", "Baseline gate: the session fails if the pass rate or mean "
           "score dropped significantly at this level (paired tests over the scenarios, Holm over the two), or a "
           "scenario's pass count did (Fisher's exact test, Benjamini-Hochberg over the scenarios); a bare flag or "
           "true means 0.05 (empty: off).", flag="--llmsim-fail-on-significant-regression", kind="float",
           low=0.0001, high=0.5, const="0.05", metavar="ALPHA"),
    Option("llmsim_history", "Append each run (when, git commit and branch, the settings that change verdicts, "
           "every record with transcript, metrics and cost) to this SQLite history, the service's database format; "
           "`llmsim history` lists it, `llmsim compare` compares its runs.", flag="--llmsim-history", kind="path",
           metavar="PATH"),
    Option("llmsim_gate", "Which failing scenarios fail the run: all (any failed item) or regressions (needs "
           "llmsim_baseline: a scenario that failed on the baseline too, with no significant score drop, is a known "
           "failure, reported as xfailed; a new failure, a significant drop or any error still fails).", "all",
           flag="--llmsim-gate", kind="choice", choices=("all", "regressions"), metavar="MODE"),
    Option("llmsim_markdown", "Write a GitHub-flavoured markdown summary to this file (also appended to "
           "$GITHUB_STEP_SUMMARY when set).", flag="--llmsim-markdown", kind="path", metavar="FILE"),
    Option("llmsim_shard", "Run only shard K of N (e.g. 2/4) of the collected items, a split by scenario that is "
           "stable when scenarios are added and balanced by the recorded conversations' tokens (by count without "
           "recordings); the rest is deselected. Suite and baseline gates are then checked by `llmsim merge`, "
           "over every shard's --llmsim-results JSON export.", flag="--llmsim-shard", kind="shard", metavar="K/N"),
    Option("llmsim_calibrate", "Judge calibration: before the scenarios, the judge scores this folder of "
           "conversations a person scored (1-3); the run reports its accuracy, mean absolute error, a confusion "
           "table and the disagreements.", flag="--llmsim-calibrate", kind="path", metavar="DIR"),
    Option("llmsim_min_judge_accuracy", "Judge gate: the session fails if the judge agrees with the human scores "
           "of the calibration set less often than this (a fraction such as 0.8, or a percentage such as 80%).",
           flag="--llmsim-min-judge-accuracy", kind="rate", metavar="X"),
    # The service and the ``llmsim`` command (``cli.py``, ``service/``); pytest itself does not read these
    # (``pytest=False``: not resolved by pytest, so their environment variables never touch a pytest run).
    Option("llmsim_output_dir", "`llmsim run`: directory of the batch's results (JSON, CSV, NDJSON) and summary; "
           "`llmsim serve`: where its database goes by default.", "results", kind="path", pytest=False),
    Option("llmsim_host", "`llmsim serve`: address to bind; any address but loopback needs LLMSIM_API_TOKEN.",
           "127.0.0.1", env="HOST", pytest=False),
    Option("llmsim_port", "`llmsim serve`: port to listen on.", "5000", kind="int", low=0, high=65535, env="PORT",
           pytest=False),
    Option("llmsim_service_db", "`llmsim serve`: SQLite database of batches, results and usage (default: "
           "llmsim.sqlite3 in llmsim_output_dir).", kind="path", shown_default="(empty: in llmsim_output_dir)",
           pytest=False),
    Option("llmsim_log_dir", "`llmsim serve`: directory of the rotated app, error, token-usage and conversation "
           "logs (`off`: none).", "logs", kind="path", pytest=False),
    Option("llmsim_webhook_url", "`llmsim serve`: announce each conversation's start with a POST to this URL.",
           env="WEBHOOK_URL", pytest=False),
    Option("llmsim_webhook_timeout", "Seconds per webhook POST.", "5", kind="float", low=0.001, pytest=False),
    Option("llmsim_webhook_retries", "Retries of a failed webhook POST.", "2", kind="int", low=0, high=10,
           pytest=False),
    Option("llmsim_max_request_bytes", "`llmsim serve`: largest request body accepted (larger: 413).", "10000000",
           kind="int", low=1024, pytest=False),
)

ROWS: Mapping[str, Option] = MappingProxyType({row.ini: row for row in OPTIONS})


def shown_default(row: Option) -> str:
    if row.shown_default:
        return row.shown_default
    if isinstance(row.default, list):
        return ", ".join(f"`{value}`" for value in row.default)
    text = f"`{row.default}`" if row.default != "" else "(empty)"
    if row.local_default is not None:
        text += f" (local model: `{row.local_default}`)"
    return text


def markdown_table(rows: Iterable[Option] = OPTIONS) -> str:
    """The README's configuration table, generated from the rows."""
    lines = ["| ini key | command line | environment | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        flag = f"`{row.flag}`" if row.flag else ""
        env = f"`{row.env}`" if row.env else ""
        lines.append(f"| `{row.ini}` | {flag} | {env} | {shown_default(row)} | {row.help} |")
    return "\n".join(lines)


# -- resolution ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedOptions:
    """Every option's value (parsed) and where it came from: ``command line``, ``env NAME``, ``ini``,
    ``local-model default`` or ``default``. Frozen: resolved once per process at configure time."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    local: bool  # no endpoint configured: the local model serves every role
    invocation_dir: Path = field(compare=False)
    ini_dir: Path = field(compare=False)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def source(self, name: str) -> str:
        return self.sources[name]

    def with_values(self, **values: Any) -> ResolvedOptions:
        """A copy with some values replaced (front ends other than pytest, tests)."""
        merged = {**self.values, **values}
        sources = {**self.sources, **{name: "given" for name in values}}
        return ResolvedOptions(MappingProxyType(merged), MappingProxyType(sources), self.local,
                               self.invocation_dir, self.ini_dir)


def _parse(row: Option, raw: Any, base: Path, source: str = "") -> Any:
    """``raw`` (a string, or a list for line lists) as the row's type; ConfigError naming the option (and the
    environment variable the value came from)."""
    if row.kind == "lines":
        return [str(line).strip() for line in raw if str(line).strip()]
    text = str(raw).strip()
    where = f"{row.ini}" + (f" ({source})" if source.startswith("env ") else f" ({row.flag})" if row.flag else "")
    if row.kind == "str":
        return text
    if row.kind == "path":
        if not text or text.lower() == "off":  # ``off``: an ini value cannot be set to empty on the command line
            return None
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else base / path
    if row.kind == "bool":
        value = text.lower()
        if value in ("true", "yes", "on", "1"):
            return True
        if value in ("false", "no", "off", "0", ""):
            return False
        raise ConfigError(f"{where} must be true or false, got {text!r}")
    if row.kind == "choice":
        value = text.lower()
        if value not in row.choices:
            raise ConfigError(f"{where} must be one of {', '.join(row.choices)}, got {text!r}")
        return value
    if row.const is not None and text.lower() in ("true", "yes", "on"):
        text = row.const
    elif row.const is not None and text.lower() in ("false", "no", "off"):
        return None
    if text == "":
        return None
    if row.kind == "shard":
        try:
            return parse_shard(text)
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}") from None
    if row.kind == "rate":
        return _parse_rate(where, text)
    if row.kind == "cuts":
        return parse_cuts(where, text)
    try:
        number = int(text) if row.kind == "int" else float(text)
    except ValueError:
        kind = "a whole number" if row.kind == "int" else "a number"
        raise ConfigError(f"{where} must be {kind}, got {text!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {text!r}")
    if row.low is not None and row.high is not None and not row.low <= number <= row.high:
        raise ConfigError(f"{where} must be between {row.low:g} and {row.high:g}, got {text}")
    if row.low is not None and number < row.low:
        raise ConfigError(f"{where} must be >= {row.low:g}, got {text}")
    if row.high is not None and number > row.high:
        raise ConfigError(f"{where} must be <= {row.high:g}, got {text}")
    return number


def parse_value(row: Option, raw: Any, base: Path) -> Any:
    """``raw`` as ``row``'s type (a front's own flag read like the row, e.g. ``llmsim merge --min-pass-rate``);
    ConfigError naming the option."""
    return _parse(row, raw, base)


def _parse_rate(where: str, text: str) -> float:
    """A share: a fraction (``0.9``) or a percentage (``90%``)."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        raise ConfigError(f"{where} must be a number (0.9) or a percentage (90%), got {text!r}") from None
    if percent:
        value /= 100
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ConfigError(f"{where} must be a fraction between 0 and 1 or a percentage such as 90%, got {text!r}")
    return value


def parse_cuts(where: str, text: str) -> tuple[float, float]:
    """Two cut-points of the expected score 1-3, ``LOW,HIGH`` (``1.5,2.5``): 1 below LOW, 3 from HIGH on, else 2."""
    parts = [part.strip() for part in text.split(",")]
    try:
        low, high = (float(part) for part in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where} must be two numbers LOW,HIGH such as 1.5,2.5, got {text!r}")
    if not 1 <= low <= high <= 3:
        raise ConfigError(f"{where} must satisfy 1 <= LOW <= HIGH <= 3 (the expected score's range), got {text!r}")
    return low, high


def _is_set(raw: Any) -> bool:
    return raw is not None and raw != "" and raw != []


def resolve_values(
    rows: Iterable[Option], *, cli: Mapping[str, Any], env: Mapping[str, str], ini: Mapping[str, Any],
    invocation_dir: Path, ini_dir: Path, local: Callable[[Mapping[str, Any]], bool] | None = None,
) -> ResolvedOptions:
    """Resolve ``rows`` from raw command-line, environment and ini values (pure: no pytest).

    ``local`` decides, from the values resolved so far, whether the local model serves the run; rows with a
    ``local_default`` the user did not set then take it.
    """
    rows = list(rows)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    unset: list[Option] = []
    for row in rows:
        if _is_set(cli.get(row.ini)):
            raw, source, base = cli[row.ini], "command line", invocation_dir
        elif row.env and _is_set(env.get(row.env)):
            raw, source, base = env[row.env], f"env {row.env}", invocation_dir
        elif _is_set(ini.get(row.ini)):
            raw, source, base = ini[row.ini], "ini", ini_dir
        else:
            raw, source, base = row.default, "default", ini_dir
            unset.append(row)
        values[row.ini] = _parse(row, raw, base, source)
        sources[row.ini] = source
    is_local = bool(local(values)) if local is not None else False
    if is_local:
        for row in unset:
            if row.local_default is not None:
                values[row.ini] = _parse(row, row.local_default, ini_dir)
                sources[row.ini] = "local-model default"
    return ResolvedOptions(MappingProxyType(values), MappingProxyType(sources), is_local, invocation_dir, ini_dir)


def api_key(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """The API key from the environment variable the options name (never stored in any resolved object)."""
    env = os.environ if env is None else env
    return env.get(str(values.get("llmsim_api_key_env") or "OPENAI_API_KEY"), "")


def endpoint_configured(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> bool:
    """A base URL or an API key is set: calls go to that endpoint; otherwise the local model serves them."""
    return bool(values.get("llmsim_base_url") or api_key(values, env))


def build_settings(
    resolved: ResolvedOptions, *, endpoint_id: str = "", default_model: str = DEFAULT_MODEL,
    connect: Callable[[], str] | None = None, description: str = "", env: Mapping[str, str] | None = None,
    rootdir: Path | None = None,
) -> RunSettings:
    """The engine's settings from resolved options. For the local model, pass its ``connect`` callable (which
    starts the server on the first uncached call and returns its URL), identity and description. ``rootdir``
    is where python agents are imported from (default: the ini file's directory, pytest's rootdir)."""
    agent_spec = None
    if resolved["llmsim_agent"]:
        from pytest_llmsim.agents.specs import parse_agent_spec

        agent_spec = parse_agent_spec(resolved["llmsim_agent"])
    shared_model = resolved["llmsim_model"] or default_model
    record_mode = RecordMode(resolved["llmsim_record_mode"])
    roles = {
        role: RoleSettings(
            model=resolved[f"llmsim_{role}_model"] or shared_model,
            template=resolved[f"llmsim_{role}_template"],
            temperature=resolved[f"llmsim_{role}_temperature"],
            max_tokens=resolved[f"llmsim_{role}_max_tokens"],
        )
        for role in ROLES
    }
    endpoint = EndpointSettings(
        base_url=None if resolved.local else (resolved["llmsim_base_url"] or None),
        api_key="" if resolved.local else api_key(resolved.values, env),
        endpoint_id=endpoint_id or resolved["llmsim_endpoint_id"],
        request_timeout=resolved["llmsim_request_timeout"],
        max_retries=resolved["llmsim_max_retries"],
        rate_limit_wait=resolved["llmsim_rate_limit_wait"],
        connect=connect,
        description=description,
        http_backend=resolved["llmsim_http_backend"],
        configured=endpoint_chosen(resolved),
        max_live_cost_usd=resolved["llmsim_max_cost_usd"] if record_mode is RecordMode.CHANGED else None,
        prices=resolved["llmsim_prices"],
    )
    return RunSettings(
        endpoint=endpoint,
        agent=roles["agent"],
        client=roles["client"],
        evaluator=roles["evaluator"],
        prompts_dir=resolved["llmsim_prompts_dir"],
        cache_dir=resolved["llmsim_cache_dir"],
        record_mode=record_mode,
        default_seed=resolved["llmsim_seed"],
        min_score=resolved["llmsim_min_score"],
        max_turns=resolved["llmsim_max_turns"],
        timeout=resolved["llmsim_timeout"],
        first_speaker=resolved["llmsim_first_speaker"],
        end_marker=resolved["llmsim_end_marker"],
        language=resolved["llmsim_language"],
        judge_attempts=resolved["llmsim_judge_attempts"],
        judge_repeats=resolved["llmsim_judge_repeats"],
        judge_policy=resolved["llmsim_judge_policy"],
        judge_method=resolved["llmsim_judge_method"],
        logprob_thresholds=resolved["llmsim_logprob_thresholds"],
        concurrency=resolved["llmsim_concurrency"],
        agent_spec=agent_spec,
        rootdir=rootdir if rootdir is not None else resolved.ini_dir,
        recordings_dir=resolved["llmsim_recordings"],
        match_endpoint=resolved["llmsim_match_endpoint"],
        adoptable=adoptable_role_settings(resolved),
        evaluate=tuple(resolved["llmsim_evaluate"]) or ("judge",),
        chats_dir=resolved["llmsim_chats_dir"],
        readable=resolved["llmsim_readable"],
        trials=resolved["llmsim_trials"],
        scenario_min_pass_rate=resolved["llmsim_scenario_min_pass_rate"],
    )


def endpoint_chosen(resolved: ResolvedOptions) -> bool:
    """The user configured where calls go: a base URL or an API key, or, with neither, an explicit
    ``llmsim_local_model``. False: the bundled local model would serve by default (never called by record mode
    ``changed``, whose verdicts would be noise)."""
    return not resolved.local or resolved.source("llmsim_local_model") != "default"


def adoptable_role_settings(resolved: ResolvedOptions) -> frozenset[str]:
    """Role settings a replay-only run without an endpoint takes from each scenario's recording: those the user
    set nowhere (only a default applies), so that recordings made against an API replay in CI without its key
    (whose run would otherwise take the local model's defaults and miss every call). Such a run is record mode
    ``none``, or ``changed`` with no endpoint chosen (``endpoint_chosen``); with an endpoint, ``changed`` uses the
    configured role settings (a recording made with other ones is a changed conversation). Empty in any other
    run."""
    mode = RecordMode(resolved["llmsim_record_mode"])
    replay_only = mode is RecordMode.NONE or (mode is RecordMode.CHANGED and not endpoint_chosen(resolved))
    if not resolved.local or not replay_only:
        return frozenset()
    user_set = {name for name, source in resolved.sources.items() if source not in ("default", "local-model default")}
    adoptable = set()
    for role in ROLES:
        if f"llmsim_{role}_model" not in user_set and "llmsim_model" not in user_set:
            adoptable.add(f"{role}.model")
        for name in ("temperature", "max_tokens"):
            if f"llmsim_{role}_{name}" not in user_set:
                adoptable.add(f"{role}.{name}")
    return frozenset(adoptable)


def rpm_share(resolved: ResolvedOptions, workers: int) -> float | None:
    """This process's share of the requests-per-minute cap: the cap is the endpoint's, so xdist workers split
    it evenly (``-n 4 --llmsim-rpm 600``: 150 each)."""
    total = resolved["llmsim_rpm"]
    return None if total is None else total / max(1, workers)


# Options that change where results go, how fast a run goes or which part of the suite runs, never a verdict: left
# out of ``verdict_settings``, so shards may differ in them.
NOT_VERDICT_SETTINGS = frozenset({
    "llmsim_cache_dir", "llmsim_concurrency", "llmsim_rpm", "llmsim_tpm", "llmsim_http_backend", "llmsim_chats_dir",
    "llmsim_readable", "llmsim_results", "llmsim_histogram", "llmsim_markdown", "llmsim_output_dir", "llmsim_host",
    "llmsim_port", "llmsim_service_db", "llmsim_log_dir", "llmsim_webhook_url", "llmsim_webhook_timeout",
    "llmsim_webhook_retries", "llmsim_max_request_bytes", "llmsim_shard", "llmsim_api_key_env",
})


def verdict_settings(resolved: ResolvedOptions) -> dict[str, Any]:
    """Every resolved option that can change a verdict, as JSON values: what the shards of one run must share
    (``reporting.merge``). Paths are relative to the ini file's directory when under it (each CI job checks the
    repository out in its own place); the base URL without credentials."""
    from pytest_llmsim.model.settings import redact_url

    base = resolved.ini_dir.resolve()
    settings: dict[str, Any] = {}
    for row in OPTIONS:
        if row.ini in NOT_VERDICT_SETTINGS:
            continue
        value = resolved.values.get(row.ini)
        if isinstance(value, Path):
            path = value.resolve()
            value = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
        elif row.ini == "llmsim_base_url" and value:
            value = redact_url(str(value))
        elif isinstance(value, list | tuple):
            value = [str(v) for v in value]
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = str(value)
        settings[row.ini] = value
    settings["endpoint"] = "local model" if resolved.local else "configured"  # an API key decides it too
    return settings
