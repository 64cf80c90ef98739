"""Command-line options and ini keys, and their resolution into engine settings.

Precedence, highest first: command-line option, environment variable (endpoint only), ini key, default.
Per-scenario fields (``min_score``, ``max_turns``, ``timeout``, role overrides) beat all of these.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .errors import ConfigError
from .settings import ROLES, EndpointSettings, RecordMode, RoleSettings, RunSettings, resolve_http_backend

DEFAULT_MODEL = "gpt-4o-mini"
ROLE_DEFAULTS = {
    "agent": {"template": "agent.j2", "temperature": "0.3", "max_tokens": "300"},
    "client": {"template": "client.j2", "temperature": "0.7", "max_tokens": "150"},
    "evaluator": {"template": "evaluator.j2", "temperature": "0.0", "max_tokens": "300"},
}


@dataclass(frozen=True)
class IniKey:
    name: str
    help: str
    default: Any
    type: str | None = None  # None = string


INI_KEYS = [
    IniKey("llmsim_paths", "Paths (dirs, files or globs, relative to rootdir) whose .json/.yaml/.yml files "
           "are scenario files.", ["scenarios"], "linelist"),
    IniKey("llmsim_prompts_dir", "Directory of the jinja2 prompt templates.", "prompts"),
    IniKey("llmsim_cache_dir", "Directory of the LLM call cache.", ".llmsim_cache"),
    IniKey("llmsim_record_mode", "Cache record mode: once, none or all.", "once"),
    IniKey("llmsim_base_url", "OpenAI-compatible endpoint (OPENAI_BASE_URL and --llmsim-base-url win).", ""),
    IniKey("llmsim_api_key_env", "Environment variable holding the API key.", "OPENAI_API_KEY"),
    IniKey("llmsim_endpoint_id", "Identity of the endpoint in cache keys (default: its URL).", ""),
    IniKey("llmsim_model", "Model for every role unless a role sets its own.", ""),
    IniKey("llmsim_seed", "Seed sent with every call when a scenario has no SEED variable.", "1234"),
    IniKey("llmsim_min_score", "Minimum passing score (1-3) when a scenario sets none.", "2"),
    IniKey("llmsim_max_turns", "Messages (both sides) after which a conversation stops.", "30"),
    IniKey("llmsim_timeout", "Seconds per conversation before it is stopped and judged.", "90"),
    IniKey("llmsim_request_timeout", "Seconds per LLM request.", "60"),
    IniKey("llmsim_max_retries", "Retries per LLM request on 429, 5xx, timeouts and connection errors.", "4"),
    IniKey("llmsim_judge_attempts", "Evaluator attempts before an unparsable verdict is an error.", "3"),
    IniKey("llmsim_language", "Language of the evaluator's comment.", "English"),
    IniKey("llmsim_end_marker", "Text either side writes to end the call (stripped from transcripts).",
           "[END_CALL]"),
    IniKey("llmsim_first_speaker", "Who opens the call: client or agent.", "client"),
    IniKey("llmsim_concurrency", "Conversations in flight at once in one process.", "16"),
    IniKey("llmsim_rpm", "Cap on LLM requests per minute for the whole run, split between xdist workers "
           "(empty: none).", ""),
    IniKey("llmsim_http_backend", "HTTP transport of the openai client: auto (aiohttp when installed, else "
           "httpx), aiohttp or httpx.", "auto"),
    IniKey("llmsim_local_model", "GGUF file for the local server (default: the bundled SmolLM2).", ""),
]
for _role, _defaults in ROLE_DEFAULTS.items():
    INI_KEYS += [
        IniKey(f"llmsim_{_role}_model", f"Model of the {_role} role (default: llmsim_model).", ""),
        IniKey(f"llmsim_{_role}_template", f"Prompt template of the {_role} role.", _defaults["template"]),
        IniKey(f"llmsim_{_role}_temperature", f"Temperature of the {_role} role.", _defaults["temperature"]),
        IniKey(f"llmsim_{_role}_max_tokens", f"Max tokens per reply of the {_role} role.",
               _defaults["max_tokens"]),
    ]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmsim", "conversational regression testing of LLM agents (pytest-llmsim)")
    group.addoption("--llmsim-base-url", dest="llmsim_base_url", metavar="URL",
                    help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (env OPENAI_BASE_URL).")
    group.addoption("--llmsim-model", dest="llmsim_model", metavar="NAME", help="Model for every role.")
    for role in ROLES:
        group.addoption(f"--llmsim-{role}-model", dest=f"llmsim_{role}_model", metavar="NAME",
                        help=f"Model of the {role} role.")
    group.addoption("--llmsim-record", dest="llmsim_record_mode", metavar="MODE",
                    choices=[m.value for m in RecordMode],
                    help="Cache record mode: once (default: replay hits, record misses), none (replay only, "
                         "a miss is an error), all (call everything, overwrite).")
    group.addoption("--llmsim-cache-dir", dest="llmsim_cache_dir", metavar="DIR",
                    help="LLM call cache directory (default .llmsim_cache).")
    group.addoption("--llmsim-seed", dest="llmsim_seed", metavar="N", type=int,
                    help="Seed for scenarios without a SEED variable (default 1234).")
    group.addoption("--llmsim-min-score", dest="llmsim_min_score", metavar="N", type=int, choices=[1, 2, 3],
                    help="Minimum passing score for scenarios that set none (default 2).")
    group.addoption("--llmsim-max-turns", dest="llmsim_max_turns", metavar="N", type=int,
                    help="Messages per conversation before it stops (default 30).")
    group.addoption("--llmsim-timeout", dest="llmsim_timeout", metavar="SECONDS", type=float,
                    help="Seconds per conversation (default 90).")
    group.addoption("--llmsim-language", dest="llmsim_language", metavar="LANG",
                    help="Language of the evaluator's comments (default English).")
    group.addoption("--llmsim-concurrency", dest="llmsim_concurrency", metavar="N", type=int,
                    help="Conversations in flight at once per process (default 16).")
    group.addoption("--llmsim-rpm", dest="llmsim_rpm", metavar="N", type=float,
                    help="Cap on LLM requests per minute for the whole run (xdist workers split it).")
    group.addoption("--llmsim-local-model", dest="llmsim_local_model", metavar="PATH",
                    help="GGUF model for the local server used when no endpoint is configured.")
    for key in INI_KEYS:
        parser.addini(key.name, key.help, type=key.type, default=key.default)  # type: ignore[arg-type]


def option_or_ini(config: pytest.Config, name: str) -> Any:
    """The command-line value of ``name`` if given, else its ini value."""
    value = config.getoption(name, default=None)
    if value is not None:
        return value
    return config.getini(name)


# Generation settings that suit the bundled 135M-parameter model on 2 CPU cores: short replies keep the chat
# history (which the model re-reads every turn) small, and the local server answers one request at a time.
LOCAL_MODEL_DEFAULTS = {
    "llmsim_agent_max_tokens": "80",
    "llmsim_client_max_tokens": "48",
    "llmsim_evaluator_max_tokens": "120",
    "llmsim_concurrency": "2",
    "llmsim_timeout": "300",
}


def is_left_default(config: pytest.Config, name: str) -> bool:
    """True when neither the command line nor the ini file changed ``name`` from its declared default."""
    if config.getoption(name, default=None) is not None:
        return False
    declared = next(key.default for key in INI_KEYS if key.name == name)
    return config.getini(name) == declared


def _number(config: pytest.Config, name: str, kind: type, low: float | None = None,
            fallbacks: dict[str, str] | None = None) -> Any:
    raw = option_or_ini(config, name)
    if fallbacks and name in fallbacks and is_left_default(config, name):
        raw = fallbacks[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"llmsim: {name} must be a {kind.__name__}, got {raw!r}") from None
    if low is not None and value < low:
        raise pytest.UsageError(f"llmsim: {name} must be >= {low}, got {value!r}")
    return value


def resolve_path(config: pytest.Config, raw: str) -> Path:
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else config.rootpath / path


def record_mode(config: pytest.Config) -> RecordMode:
    try:
        return RecordMode.parse(str(option_or_ini(config, "llmsim_record_mode")))
    except ValueError as exc:
        raise pytest.UsageError(f"llmsim: llmsim_record_mode: {exc}") from None


def configured_endpoint(config: pytest.Config) -> tuple[str | None, str]:
    """(base_url, api_key) from option, environment and ini; both empty means 'no endpoint configured'."""
    base_url = (config.getoption("llmsim_base_url", default=None) or os.environ.get("OPENAI_BASE_URL")
                or config.getini("llmsim_base_url") or None)
    key_env = config.getini("llmsim_api_key_env") or "OPENAI_API_KEY"
    return base_url, os.environ.get(key_env, "")


def build_settings(
    config: pytest.Config, *, base_url: str | None, api_key: str, endpoint_id: str = "",
    default_model: str = DEFAULT_MODEL, local: bool = False, connect: Callable[[], str] | None = None,
    description: str = "",
) -> RunSettings:
    """Resolve every option into RunSettings; raises pytest.UsageError naming the bad option.

    ``local``: the bundled local model serves every role; settings the user left at their defaults take
    ``LOCAL_MODEL_DEFAULTS`` instead.
    """
    fallbacks = LOCAL_MODEL_DEFAULTS if local else None
    shared_model = option_or_ini(config, "llmsim_model") or default_model
    roles = {}
    for role in ROLES:
        roles[role] = RoleSettings(
            model=option_or_ini(config, f"llmsim_{role}_model") or shared_model,
            template=config.getini(f"llmsim_{role}_template"),
            temperature=_number(config, f"llmsim_{role}_temperature", float, 0),
            max_tokens=_number(config, f"llmsim_{role}_max_tokens", int, 1, fallbacks),
        )
    first_speaker = str(config.getini("llmsim_first_speaker")).strip()
    if first_speaker not in ("client", "agent"):
        raise pytest.UsageError(f"llmsim: llmsim_first_speaker must be client or agent, got {first_speaker!r}")
    min_score = _number(config, "llmsim_min_score", int, 1)
    if min_score > 3:
        raise pytest.UsageError(f"llmsim: llmsim_min_score must be 1, 2 or 3, got {min_score}")
    endpoint = EndpointSettings(
        base_url=base_url,
        api_key=api_key,
        endpoint_id=endpoint_id or config.getini("llmsim_endpoint_id"),
        request_timeout=_number(config, "llmsim_request_timeout", float, 0.001),
        max_retries=_number(config, "llmsim_max_retries", int, 0),
        connect=connect,
        description=description,
        http_backend=configured_http_backend(config),
    )
    return RunSettings(
        endpoint=endpoint,
        agent=roles["agent"],
        client=roles["client"],
        evaluator=roles["evaluator"],
        prompts_dir=resolve_path(config, config.getini("llmsim_prompts_dir")),
        cache_dir=resolve_path(config, option_or_ini(config, "llmsim_cache_dir")),
        record_mode=record_mode(config),
        default_seed=_number(config, "llmsim_seed", int),
        min_score=min_score,
        max_turns=_number(config, "llmsim_max_turns", int, 1),
        timeout=_number(config, "llmsim_timeout", float, 0.001, fallbacks),
        first_speaker=first_speaker,
        end_marker=str(config.getini("llmsim_end_marker")),
        language=str(option_or_ini(config, "llmsim_language")),
        judge_attempts=_number(config, "llmsim_judge_attempts", int, 1),
        concurrency=_number(config, "llmsim_concurrency", int, 1, fallbacks),
    )


def configured_http_backend(config: pytest.Config) -> str:
    """``llmsim_http_backend`` as written (auto, aiohttp or httpx), checked; a bad value is a usage error."""
    name = str(config.getini("llmsim_http_backend")).strip().lower() or "auto"
    http_backend_in_use(config)
    return name


def http_backend_in_use(config: pytest.Config, base_url: str | None = None) -> str:
    """The openai client's transport, resolved (``aiohttp`` or ``httpx``); a bad value is a usage error."""
    try:
        return resolve_http_backend(str(config.getini("llmsim_http_backend")), base_url)
    except ConfigError as exc:
        raise pytest.UsageError(f"llmsim: {exc}") from None


def uses_local_model(config: pytest.Config) -> bool:
    """No endpoint configured: the bundled (or --llmsim-local-model) model serves every role."""
    base_url, api_key = configured_endpoint(config)
    return not (base_url or api_key)


def effective_concurrency(config: pytest.Config) -> int:
    """Conversations in flight per process, after the local model's defaults."""
    fallbacks = LOCAL_MODEL_DEFAULTS if uses_local_model(config) else None
    return int(_number(config, "llmsim_concurrency", int, 1, fallbacks))


def rpm(config: pytest.Config) -> float | None:
    """This process's share of the requests-per-minute cap.

    The cap is the endpoint's, so it is split evenly between xdist workers (``-n 4 --llmsim-rpm 600``: 150 each).
    """
    raw = option_or_ini(config, "llmsim_rpm")
    if raw in (None, ""):
        return None
    total = _number(config, "llmsim_rpm", float, 0.001)
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput.get("workercount", 1)) if workerinput else 1
    return total / max(1, workers)
