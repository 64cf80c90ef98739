"""Resolved run settings: plain frozen data handed from a front end (pytest, a script) to the engine."""

from __future__ import annotations

import base64
import functools
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

from pytest_llmsim.errors import ConfigError

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec, RoleOverride, Scenario


class RecordMode(StrEnum):
    """What recordings and the disk cache may do. ``once``: replay hits, call and record misses (a scenario's
    recording is rewritten when its conversation changed); ``changed``: like ``once``, for pull-request jobs, but
    an unrecorded call goes live only to an endpoint the user configured (never to the bundled local model by
    default: without one, it is an ``unjudged`` error), and a recording its conversation replays entirely is
    trusted as in ``none``; ``new``: record scenarios that have no recording yet and never change an existing one
    (a call missing from it is an error); ``none``: replay only, a miss is an error (CI with committed
    recordings); ``all``: call everything and overwrite.

    The predicates below say what each mode means, once, for the cache, the recordings, the client and the agents.
    """

    ONCE = "once"
    CHANGED = "changed"
    NEW = "new"
    NONE = "none"
    ALL = "all"

    def replays(self) -> bool:
        """Recorded replies answer (every mode but ``all``)."""
        return self is not RecordMode.ALL

    def may_call_network(self, endpoint_configured: bool = True) -> bool:
        """Whether an unrecorded LLM call may be sent: never in ``none``; in ``changed`` only when the user
        configured an endpoint (``endpoint_configured``: a base URL, an API key or an explicit local model)."""
        if self is RecordMode.NONE:
            return False
        return endpoint_configured or self is not RecordMode.CHANGED

    def may_call_agent(self) -> bool:
        """Whether an agent under test with ``agent_cache: true`` may be called for a reply not recorded (its own
        code or service, not the LLM endpoint): every mode but ``none``."""
        return self is not RecordMode.NONE

    def rewrites_recordings(self) -> bool:
        """Whether a scenario's existing recording is rewritten when its conversation changed."""
        return self in (RecordMode.ONCE, RecordMode.CHANGED, RecordMode.ALL)

    def trusts_replayed_recordings(self) -> bool:
        """Whether a recording that answered every call of its conversation is trusted as it is (its verdict and
        transcript must be what its calls give, else a ``recording_error``) instead of being rewritten."""
        return self in (RecordMode.NONE, RecordMode.NEW, RecordMode.CHANGED)

    def corrupt_entry_is_error(self) -> bool:
        """Whether a corrupt cache entry is an error (replay only) rather than a miss to re-record."""
        return self is RecordMode.NONE

    @classmethod
    def parse(cls, value: str) -> RecordMode:
        try:
            return cls(value.strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"invalid record mode {value!r}; valid modes: {valid}") from None


ROLES = ("agent", "client", "evaluator")


@dataclass(frozen=True)
class RoleSettings:
    model: str
    template: str
    temperature: float
    max_tokens: int

    def with_override(self, override: RoleOverride | None) -> RoleSettings:
        if override is None:
            return self
        return replace(
            self,
            model=override.model or self.model,
            template=override.template or self.template,
            temperature=self.temperature if override.temperature is None else override.temperature,
            max_tokens=override.max_tokens or self.max_tokens,
        )


@functools.lru_cache(maxsize=64)
def _identity(endpoint_id: str, base_url: str | None) -> str:
    """An endpoint's identity in keys (computed once: every request's descriptor names it)."""
    return endpoint_id or redact_url(base_url or "https://api.openai.com/v1").rstrip("/")


def redact_url(url: str) -> str:
    """``url`` without credentials: user info and query values (``?api-key=...``) become ``***``."""
    parts = urlsplit(url)
    if not (parts.username or parts.password or parts.query):
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def split_url_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its query, and the query's parameters: ``http://h/v1?api-key=k`` gives
    ``("http://h/v1", {"api-key": "k"})``. The openai client appends request paths to its base URL, so a query
    left there lands inside the path (``/v1/?api-key=k/chat/completions``); it goes in ``default_query``."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment)), query


MIN_SECRET_LENGTH = 4  # shorter values are not scrubbed: they would mangle ordinary words in every message
_MIN_USERNAME_LENGTH = 8  # a user name alone ("user", "token") is rarely the secret; a key in its place is


def url_secrets(url: str | None) -> list[str]:
    """What ``url`` holds that must never be shown: user info, password (also as the Basic auth token an
    echoing server may repeat) and query values; unfiltered, see ``scrub_secrets``."""
    if not url:
        return []
    parts = urlsplit(url)
    found: list[str] = []
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        user, _, password = userinfo.partition(":")
        found += [userinfo, unquote(userinfo), password, unquote(password)]
        if len(unquote(user)) >= _MIN_USERNAME_LENGTH:
            found += [user, unquote(user)]
        if password:
            found.append(base64.b64encode(unquote(userinfo).encode()).decode())
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    return found


@functools.lru_cache(maxsize=64)
def _secret_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    variants: set[str] = set()
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            variants |= {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    if not variants:
        return None
    return re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))


@functools.lru_cache(maxsize=64)
def _endpoint_secrets(api_key: str, base_url: str | None) -> frozenset[str]:
    return frozenset([api_key, *url_secrets(base_url)])


def scrub_secrets(text: str, secrets: frozenset[str]) -> str:
    """``text`` with each secret of at least ``MIN_SECRET_LENGTH`` characters, and its URL-encoded forms,
    replaced by ``***``. Cheap on repeated calls (the pattern is cached) and safe on any text."""
    if not text or not isinstance(text, str):
        return text
    pattern = _secret_pattern(secrets)
    return pattern.sub("***", text) if pattern is not None else text


@dataclass(frozen=True)
class EndpointSettings:
    """Where LLM calls go. ``endpoint_id`` is what the cache key sees instead of the URL (a local
    server on a random port keeps one identity); the API key is never part of any key, report or log.
    ``connect``, when set, is called once on the first uncached call and returns the base URL: the local
    model server starts only when a call really needs it, so a fully cached run starts no model."""

    base_url: str | None
    api_key: str = field(default="", repr=False)
    endpoint_id: str = ""
    request_timeout: float = 60.0
    max_retries: int = 4
    # The user configured this endpoint (a base URL, an API key, an explicit ``llmsim_local_model``); False: the
    # bundled local model serves by default, which record mode ``changed`` never calls.
    configured: bool = True
    # Record mode ``changed``: no new live call once this process's live calls cost this much (USD; None: no cap).
    max_live_cost_usd: float | None = None
    prices: Path | None = None  # the price file (``llmsim_prices``) the cap is counted with
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    # Seconds a scenario's requests may wait on a rate limit in all (queued for the limiter, sitting out 429s);
    # that time does not count against the conversation's timeout. None: no bound.
    rate_limit_wait: float | None = 600.0
    connect: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    description: str = ""
    http_backend: str = "auto"  # auto | aiohttp | httpx: the openai client's HTTP transport

    @property
    def identity(self) -> str:
        return _identity(self.endpoint_id, self.base_url)

    def describe(self) -> str:
        """Where calls go, for people: a URL or the local model, never the key."""
        return self.description or redact_url(self.base_url or "https://api.openai.com/v1")

    def secrets(self) -> frozenset[str]:
        """The API key and the base URL's credentials and query values: what ``scrub`` hides."""
        return _endpoint_secrets(self.api_key, self.base_url)

    def scrub(self, text: str) -> str:
        """``text`` without the API key, the base URL's user info and password, or its query values (each
        of at least 4 characters, also URL-encoded): ``***`` instead. For every error text shown or stored."""
        return scrub_secrets(text, self.secrets())


HTTP_BACKENDS = ("auto", "aiohttp", "httpx")


def resolve_http_backend(name: str, base_url: str | None = None) -> str:
    """``aiohttp`` or ``httpx``: the openai client's transport for ``llmsim_http_backend = name``.

    ``auto`` prefers openai's aiohttp transport, which costs about 40% less CPU per call than its default
    httpx one (measured here: 1.05 vs 1.7 ms per call), and takes httpx when aiohttp is not installed or
    ``base_url`` carries credentials (aiohttp refuses them beside the client's Authorization header).
    Checked without importing anything, so the pytest report header stays cheap.
    """
    name = (name or "auto").strip().lower()
    if name not in HTTP_BACKENDS:
        raise ConfigError(f"llmsim_http_backend must be one of {', '.join(HTTP_BACKENDS)}, got {name!r}")
    if name == "httpx":
        return name
    parts = urlsplit(base_url or "")
    if parts.username or parts.password:
        if name == "aiohttp":
            raise ConfigError("llmsim_http_backend = aiohttp cannot send credentials embedded in the base URL; "
                              "use httpx (or auto) for this endpoint")
        return "httpx"
    if importlib.util.find_spec("aiohttp") is not None:
        return "aiohttp"
    if name == "aiohttp":
        raise ConfigError("llmsim_http_backend = aiohttp needs the aiohttp package: pip install 'openai[aiohttp]'")
    return "httpx"


@dataclass(frozen=True)
class RunSettings:
    endpoint: EndpointSettings
    agent: RoleSettings
    client: RoleSettings
    evaluator: RoleSettings
    prompts_dir: Path
    cache_dir: Path
    record_mode: RecordMode = RecordMode.ONCE
    default_seed: int = 1234
    min_score: int = 2
    max_turns: int = 30
    timeout: float = 90.0
    first_speaker: str = "client"
    end_marker: str = "[END_CALL]"
    language: str = "English"
    judge_attempts: int = 3
    judge_repeats: int = 1  # independent verdicts per transcript (``judge.JudgeMetric``)
    judge_policy: str = "majority"  # how they decide: majority | min | mean
    judge_method: str = "auto"  # how a verdict is asked for: ``judge.JUDGE_METHODS``
    # The ``logprobs`` method's cut-points of the expected score (``judge.logprob_score``); None: 1.5 and 2.5.
    # The user's setting, else (local model) the ones recorded for its model file (``local_model.JUDGE_CALIBRATION``).
    logprob_thresholds: tuple[float, float] | None = None
    # The local model's server engine when it serves this run (``local_model.server_engine``: "xllamacpp" or
    # "llama-cpp-python"); None with an endpoint. ``auto`` judges by token probabilities only where they are sent.
    local_engine: str | None = None
    concurrency: int = 16
    # The suite-wide agent under test (ini ``llmsim_agent`` / ``--llmsim-agent``): a validated
    # ``scenario.AgentSpec``, or None for the prompt agent. A scenario's own ``agent:`` naming a kind (or only
    # prompt fields) beats it.
    agent_spec: AgentSpec | None = None
    # Where ``agent: {python: "package.module:name"}`` is imported from (put on ``sys.path``); None: the cwd.
    rootdir: Path | None = None
    # Readable per-scenario recordings (``recordings.py``); None: only the disk cache.
    recordings_dir: Path | None = None
    # The endpoint's identity is part of a recording's match (default: replay needs no endpoint).
    match_endpoint: bool = False
    # Role settings (``"agent.model"``, ``"evaluator.max_tokens"``, ...) the user set nowhere, which a replay-only
    # run takes from a scenario's recording: a run without an endpoint would otherwise use the local model's
    # defaults and miss every call recorded against another endpoint.
    adoptable: frozenset[str] = frozenset()
    # The metrics of a scenario that lists none (``llmsim_evaluate``), and the metrics that can be named: name ->
    # factory (a ``metrics.Metric`` subclass). None: the built-in ones and those of installed entry points.
    evaluate: tuple[str, ...] = ("judge",)
    # ``--llmsim-chats-dir``: one file per conversation (``chat_files``), plus a readable ``.txt`` with ``readable``.
    chats_dir: Path | None = None
    readable: bool = False
    # Trials (``trials.py``): conversations per scenario that sets no ``trials``, and the share of them that must
    # pass when it sets no ``min_pass_rate``.
    trials: int = 1
    scenario_min_pass_rate: float = 1.0
    metrics: Mapping[str, Any] | None = field(default=None, compare=False)

    def role(self, name: str, scenario: Scenario) -> RoleSettings:
        base: RoleSettings = getattr(self, name)
        return base.with_override(getattr(scenario, name))

    def agent_for(self, scenario: Scenario) -> AgentSpec | None:
        """The agent spec deciding ``scenario``'s agent: its own ``agent:`` when that names a kind or sets prompt
        fields (the prompt agent, explicitly), else the suite's (``agent_spec``, always a code kind). None or a
        spec of kind ``prompt``: the prompt (LLM) agent."""
        own = scenario.agent
        if own is not None and (own.kind != "prompt" or own.model_fields_set - {"python", "http", "openai"}):
            return own
        return self.agent_spec
