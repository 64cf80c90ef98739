"""Scenario files: parsing, validation and the per-scenario model.

Why one module: it is the scenario model together with the untrusted-input reader that builds it; the strict
validation rules are what the model's fields mean, so splitting would state each field's rules twice.

A scenario file is JSON or YAML in one of three shapes:

* a list of scenarios ``[{"name": ..., "variables": {...}}, ...]`` (the reference format);
* an object ``{"defaults": {...}, "scenarios": [...]}`` whose ``defaults`` are merged into every scenario;
* a single scenario object ``{"name": ..., "variables": {...}}``.

Problems are reported per scenario so one bad scenario never hides the others: ``load_scenario_file``
returns one ``ScenarioEntry`` per scenario, valid or not, and raises only when the file as a whole cannot
be read.

Files are untrusted input. Reading one is bounded (``MAX_FILE_BYTES``, ``MAX_NESTING_DEPTH``, and for YAML
aliases ``MAX_EXPANDED_NODES`` / ``MAX_EXPANDED_CHARS``, checked on the event stream before any Python
object is built), and validation is strict: a boolean is never a number, a number is never a string, a
duplicate key is an error, and nothing is silently ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pytest_llmsim.errors import ScenarioError
from pytest_llmsim.model.names import strip_invisible

# -- limits: far above any sane scenario file; each violation names its limit ----------------------------------
MAX_FILE_BYTES = 10 * 1024 * 1024
"""Largest scenario file read (checked before reading)."""
MAX_NESTING_DEPTH = 100
"""Deepest nesting of lists/objects, counting what YAML aliases expand to."""
MAX_EXPANDED_NODES = 1_000_000
"""Most values (scalars, lists, objects, keys) in a file once YAML aliases are expanded."""
MAX_EXPANDED_CHARS = 20_000_000
"""Most characters of scalar text in a file once YAML aliases are expanded."""
MAX_SCENARIOS_PER_FILE = 10_000
"""Most scenarios in one file."""
MAX_NAME_CHARS = 200
"""Longest scenario name (it is a pytest test id)."""
MAX_SEED = 2**31 - 1
"""Largest SEED value (every OpenAI-compatible server, llama.cpp's included, accepts 0 .. 2**31-1)."""

_SHOWN_CHARS = 120  # a value quoted in an error message is cut to this length
_TAG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Marker names pytest itself gives a meaning (a tag "skip" would silently skip the scenario) and the words of
# the ``-m`` expression language (``pytest -m not`` cannot select a tag "not").
_RESERVED_TAGS = frozenset({"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings",
                            "llmsim", "and", "or", "not", "True", "False", "None"})
# Names the plugin puts into the template context itself; a variable of the same name would be overridden.
RESERVED_VARIABLES = frozenset({"scenario_name", "end_marker", "language", "description", "transcript",
                                "transcript_text", "ended_by", "end_reason", "persona", "goal", "criteria"})
# Reserved variable names that are scenario fields: the message says to use the field instead.
_METRIC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_FIELD_VARIABLES = frozenset({"language", "description", "persona", "goal", "criteria"})


def _shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a hostile value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text):,} characters)"


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a scenario name (a pytest test id), or None if it can."""
    if not isinstance(value, str):
        return f"must be a string (got {_shown(value)})"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_NAME_CHARS:
        return f"is {len(value):,} characters long; the limit is {MAX_NAME_CHARS}"
    if "::" in value or "/" in value:
        return "must not contain '::' or '/' (it becomes the pytest test id)"
    bad = next((ch for ch in value if not ch.isprintable() and ch != " "), None)
    if bad is not None:
        return (f"must not contain newlines or other control/non-printable characters "
                f"(found {bad!r} at position {value.index(bad)})")
    return None


FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]


class RoleOverride(BaseModel):
    """Per-scenario settings for one role (agent, client or evaluator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: StrictStr | None = None
    template: StrictStr | None = None
    temperature: FiniteFloat | None = Field(default=None, ge=0, le=2)
    max_tokens: StrictInt | None = Field(default=None, ge=1)

    @field_validator("model", "template")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank (leave the field out to use the default)")
        return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL (got {_shown(value)})")
    return value


HttpUrlText = Annotated[StrictStr, AfterValidator(_http_url)]  # a URL as written: ${VAR} allowed, checked for scheme


class HttpAgentSpec(BaseModel):
    """``agent: {http: {...}}``: the agent under test is an HTTP service, POSTed once per agent turn.

    ``body`` is a JSON template walked as data (never string-templated JSON): a string that is exactly one
    placeholder (``"{{ messages }}"``) becomes that value, placeholders inside longer strings are filled as text.
    Placeholders: ``message`` (the customer's last message), ``messages`` (the conversation, OpenAI-style, from
    the agent's side), ``session_id`` (one per conversation), ``scenario``, ``variables``, ``turn``. ``reply`` is
    a dotted path to the reply text in the JSON answer (``choices.0.message.content``); ``tool_calls`` and ``end``
    optional paths. Header values may name environment variables (``${MY_TOKEN}``), read at call time and never
    written to a report, cache key or log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrlText
    body: Any = None
    reply: StrictStr = "reply"
    tool_calls: StrictStr | None = None
    end: StrictStr | None = None
    headers: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    timeout: FiniteFloat | None = Field(default=None, gt=0)

    @field_validator("reply", "tool_calls", "end")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(not part for part in value.split("."))):
            raise ValueError(f"must be a dotted path such as 'choices.0.message.content' (got {_shown(value)})")
        return value


class OpenAIAgentSpec(BaseModel):
    """``agent: {openai: {...}}``: the agent under test served as an OpenAI-compatible chat endpoint, apart from
    the endpoint that plays the customer and the judge. ``api_key_env`` names the variable holding its key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: HttpUrlText
    model: StrictStr
    api_key_env: StrictStr | None = None
    system: StrictStr | None = None
    temperature: FiniteFloat | None = Field(default=None, ge=0, le=2)
    max_tokens: StrictInt | None = Field(default=None, ge=1)


_PROMPT_FIELDS = ("model", "template", "temperature", "max_tokens")
# The framework adapters (``agents/adapters/``): each names the user's framework object as "package.module:name".
ADAPTER_KINDS = ("openai_agents", "langgraph", "pydantic_ai", "semantic_kernel", "autogen", "google_adk")
CODE_KINDS = ("python", "http", "openai", *ADAPTER_KINDS)


class AgentSpec(RoleOverride):
    """The scenario's ``agent``: the prompt agent's overrides (today's form), or exactly one of ``python``
    (``"package.module:name"``), ``http``, ``openai`` or a framework adapter (``openai_agents: "pkg.mod:agent"``,
    ``langgraph``, ``pydantic_ai``, ``semantic_kernel``, ``autogen``, ``google_adk``)."""

    python: StrictStr | None = None
    http: HttpAgentSpec | None = None
    openai: OpenAIAgentSpec | None = None
    openai_agents: StrictStr | None = None
    langgraph: StrictStr | None = None
    pydantic_ai: StrictStr | None = None
    semantic_kernel: StrictStr | None = None
    autogen: StrictStr | None = None
    google_adk: StrictStr | None = None

    @field_validator("python", *ADAPTER_KINDS)
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        module, sep, name = value.partition(":")
        if not sep or not name or not all(part.isidentifier() for part in module.split(".")) \
                or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"must be 'package.module:name' (got {_shown(value)})")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> AgentSpec:
        kinds = [kind for kind in CODE_KINDS if getattr(self, kind) is not None]
        if len(kinds) > 1:
            raise ValueError(f"sets {' and '.join(map(repr, kinds))}; an agent is exactly one of "
                             f"{', '.join(CODE_KINDS)} (or the prompt fields model/template/temperature/max_tokens)")
        prompt = [name for name in _PROMPT_FIELDS if getattr(self, name) is not None]
        if kinds and prompt:
            raise ValueError(f"{', '.join(map(repr, prompt))} only apply to the prompt agent, not to "
                             f"a {kinds[0]!r} agent; remove them")
        return self

    @property
    def kind(self) -> str:
        """``prompt``, ``python``, ``http``, ``openai`` or a framework adapter's name (``ADAPTER_KINDS``)."""
        return next((kind for kind in CODE_KINDS if getattr(self, kind) is not None), "prompt")


MATCH_MODES = ("exact", "in_order", "any_order", "subset")  # how expected agents or tool calls are matched
DEFAULT_AGENTS_MODE = "in_order"


def agent_names(value: Any, where: str) -> list[str]:
    """A list of agent names (non-empty strings); ValueError naming ``where`` otherwise."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where} must be a non-empty list of agent names (got {_shown(value)})")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not strip_invisible(name):
            raise ValueError(f"{where}[{i}] must be an agent's name, a non-empty string (got {_shown(name)})")
    return [strip_invisible(name) for name in value]


def expected_agents_options(value: Any) -> dict[str, Any]:
    """``expected_agents`` as the metric's options ``{"agents": [...], "mode": ...}``: a list of names (mode
    in_order) or a mapping with ``agents`` and ``mode``; ValueError naming what is wrong otherwise."""
    if isinstance(value, Mapping):
        unknown = [key for key in value if key not in ("agents", "mode")]
        if unknown:
            raise ValueError(f"unknown key {_shown(unknown[0])}; expected_agents has 'agents' and 'mode'")
        agents, mode = value.get("agents"), value.get("mode", DEFAULT_AGENTS_MODE)
    else:
        agents, mode = value, DEFAULT_AGENTS_MODE
    names = agent_names(agents, "'agents'" if isinstance(value, Mapping) else "expected_agents")
    if mode not in MATCH_MODES:
        raise ValueError(f"'mode' must be one of {', '.join(MATCH_MODES)} (got {_shown(mode)})")
    return {"agents": names, "mode": mode}


class Scenario(BaseModel):
    """One conversation to simulate and judge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    variables: dict[StrictStr, Any] = Field(default_factory=dict)
    description: StrictStr | None = None
    min_score: StrictInt | None = Field(default=None, ge=1, le=3)
    max_turns: StrictInt | None = Field(default=None, ge=1, le=1000)
    timeout: FiniteFloat | None = Field(default=None, gt=0)
    tags: tuple[StrictStr, ...] = ()
    skip: bool | str = False
    xfail: bool | str = False
    first_speaker: Literal["client", "agent"] | None = None
    turns: tuple[StrictStr, ...] | None = None
    # ``proceed``: once the scripted ``turns`` are said, the customer answers every agent turn with "proceed" (the
    # evaluation module's ProceedUser) until the agent ends the call or max_turns; None: the script ends the call.
    customer: Literal["proceed"] | None = None
    persona: StrictStr | None = None
    goal: StrictStr | None = None
    criteria: tuple[StrictStr, ...] | None = None
    language: StrictStr | None = None
    agent: AgentSpec | None = None
    agent_cache: StrictBool = False
    client: RoleOverride | None = None
    evaluator: RoleOverride | None = None
    # The metrics, in order: (name, options). Written as a list of names and one-key mappings of a name to its
    # options (``[judge, {rules: {not_contains: [refund]}}]``); None: the run's default (``llmsim_evaluate``).
    evaluate: tuple[tuple[str, dict[str, Any]], ...] | None = None
    # Deterministic agent selection of a multi-agent system (``metrics.agents``): the agents the conversation must
    # go through, ``[Triage, Billing]`` (in order) or ``{agents: [...], mode: exact|in_order|any_order|subset}``;
    # held as the ``expected_agents`` metric's options, run after the ``evaluate`` metrics.
    expected_agents: dict[str, Any] | None = None
    # Trials (``trials.py``): conversations of this scenario, each with its own seed, and the share that must pass.
    trials: StrictInt | None = Field(default=None, ge=1, le=100)
    min_pass_rate: FiniteFloat | StrictInt | None = Field(default=None, ge=0, le=1)

    @field_validator("evaluate", mode="before")
    @classmethod
    def _metric_list(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError("must be a non-empty list of metric names, or of one-key mappings of a metric name to "
                             f"its options (got {_shown(value)})")
        specs = []
        names: set[tuple[str, str | None]] = set()
        for i, entry in enumerate(value):
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str) \
                    and isinstance(entry[1], dict):
                name, options = entry  # already parsed (a model copied or dumped and read back)
            elif isinstance(entry, str):
                name, options = entry, {}
            elif isinstance(entry, dict) and len(entry) == 1:
                name, options = next(iter(entry.items()))
                options = {} if options is None else options
                if not isinstance(options, dict):
                    raise ValueError(f"entry #{i} ({name!r}): the options must be a mapping (got {_shown(options)})")
            else:
                raise ValueError(f"entry #{i} must be a metric name or a one-key mapping of a name to its options "
                                 f"(got {_shown(entry)})")
            if not isinstance(name, str) or not _METRIC_NAME_RE.fullmatch(name):
                raise ValueError(f"entry #{i}: {_shown(name)} is not a metric name (letters, digits, '_', '-')")
            # One entry per metric and agent (``agent: NAME``: the metric for one agent of a multi-agent system).
            target = options.get("agent") if isinstance(options.get("agent"), str) else None
            if (name, target) in names:
                twice = f"metric {name!r}" + (f" for agent {target!r}" if target is not None else "")
                raise ValueError(f"{twice} is listed twice; list it once with all its options")
            names.add((name, target))
            specs.append((name, dict(options)))
        return tuple(specs)

    @field_validator("expected_agents", mode="before")
    @classmethod
    def _expected_agents(cls, value: Any) -> Any:
        return None if value is None else expected_agents_options(value)

    @field_validator("name")
    @classmethod
    def _name_is_usable_as_test_id(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("tags", "turns", "criteria", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of strings (got {_shown(value)})")
        return value

    @field_validator("skip", "xfail", mode="before")
    @classmethod
    def _flag_or_reason(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError(f"must be true, false or a non-blank reason string (got {_shown(value)})")

    @field_validator("tags")
    @classmethod
    def _tags_are_marker_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tag in value:
            if not _TAG_RE.fullmatch(tag):
                raise ValueError(f"tag {_shown(tag)} is not a valid marker name (letters, digits, '_')")
            if tag in _RESERVED_TAGS:
                raise ValueError(f"tag {tag!r} is reserved (a pytest marker or a word of 'pytest -m'); "
                                 "use another name, or the 'skip'/'xfail' fields")
        return value

    @field_validator("turns")
    @classmethod
    def _turns_not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("must list at least one customer message (or be left out)")
        return value

    @model_validator(mode="after")
    def _proceed_needs_turns(self) -> Scenario:
        if self.customer == "proceed" and self.turns is None:
            raise ValueError("'customer: proceed' answers \"proceed\" after the scripted 'turns'; list the "
                             "customer's opening message (and follow-ups) under 'turns'")
        return self

    @field_validator("persona", "goal", "language")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank (leave the field out instead)")
        return value

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must list at least one criterion (or be left out)")
        blank = next((i for i, criterion in enumerate(value) if not criterion.strip()), None)
        if blank is not None:
            raise ValueError(f"criterion #{blank} is blank; each criterion says what the agent must do")
        return value

    @field_validator("variables")
    @classmethod
    def _variables(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_VARIABLES & set(value))
        if reserved:
            verb = "is" if len(reserved) == 1 else "are"
            fields = [name for name in reserved if name in _FIELD_VARIABLES]
            hint = "rename the variable"
            if fields:  # a variable 'persona' beside the field 'persona': say which is which
                hint = (f"{', '.join(f'the variable {n!r} would clash with the scenario field {n!r}' for n in fields)}"
                        "; write it as that field (beside 'name', not inside 'variables') or rename the variable")
            raise ValueError(f"{', '.join(map(repr, reserved))} {verb} set by llmsim for the templates; {hint}")
        if "SEED" in value:
            seed = value["SEED"]
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
                hint = "; write it without quotes" if isinstance(seed, str) and seed.strip().isdigit() else ""
                raise ValueError(f"'SEED' must be an integer from 0 to {MAX_SEED} (got {_shown(seed)}){hint}")
        return value

    @property
    def seed(self) -> int | None:
        """The scenario's ``SEED`` variable, if it has one (validated: an int in 0..MAX_SEED)."""
        seed = self.variables.get("SEED")
        return seed if isinstance(seed, int) else None


@dataclass(frozen=True)
class ScenarioEntry:
    """One scenario slot in a file: a valid ``scenario`` or a ``problem`` message, never both."""

    index: int
    item_name: str
    scenario: Scenario | None
    problem: str | None


# -- reading ---------------------------------------------------------------------------------------------------
class _FileProblem(Exception):
    """A problem found while parsing; ``where`` is ``(line, column)`` (1-based) when known."""

    def __init__(self, message: str, where: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.where = where


def _read_text(path: Path) -> str:
    too_big = (f"the file is larger than the limit of {MAX_FILE_BYTES:,} bytes (MAX_FILE_BYTES) for a scenario "
               "file; split it into several files")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError(f"{path}: {too_big.replace('larger than', f'{size:,} bytes, over')}")
        with path.open("rb") as handle:  # bounded: a file may grow, or be a device
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: {too_big}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc}") from None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


_JSON_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _json_too_deep_at(text: str) -> tuple[int, int] | None:
    """Position of the first bracket nested deeper than MAX_NESTING_DEPTH (only called on an error path)."""
    depth = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                return _line_col(text, match.start())
        elif token in "]}":
            depth -= 1
    return None


def _too_deep() -> str:
    return (f"nesting is deeper than the limit of {MAX_NESTING_DEPTH} levels (MAX_NESTING_DEPTH) "
            "for a scenario file; flatten the data")


def _too_many_nodes(what: str) -> str:
    return (f"{what} more than {MAX_EXPANDED_NODES:,} values, the limit (MAX_EXPANDED_NODES) for a scenario "
            "file; split the file or use fewer aliases")


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _FileProblem(f"duplicate key {_shown(key)} in an object; each key may appear only once")
        obj[key] = value
    return obj


def _json_constant(name: str) -> Any:
    raise _FileProblem(f"{name} is not a JSON number; use a finite number")


def _check_json_shape(data: Any) -> None:
    """Depth and value count of parsed JSON, without recursion."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if isinstance(value, dict):
            nodes += len(value)  # keys count as values, as in YAML
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth + 1 > MAX_NESTING_DEPTH:
            raise _FileProblem(_too_deep())
        if nodes > MAX_EXPANDED_NODES:
            raise _FileProblem(_too_many_nodes("the file has"))
        stack.extend((child, depth + 1) for child in children)
    if nodes > MAX_EXPANDED_NODES:
        raise _FileProblem(_too_many_nodes("the file has"))


def _load_json(path: Path, text: str) -> Any:
    try:
        data = json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_json_constant)
        _check_json_shape(data)
        return data
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}; fix the syntax") from None
    except RecursionError:  # the parser recursed too deep: report the nesting limit
        problem = _FileProblem(_too_deep(), where=_json_too_deep_at(text))
    except _FileProblem as exc:
        problem = exc
        if str(exc) == _too_deep():
            problem.where = _json_too_deep_at(text)
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ScenarioError(f"{path}: invalid JSON value: {exc}") from None
    prefix = f"{path}:{problem.where[0]}:{problem.where[1]}" if problem.where else str(path)
    raise ScenarioError(f"{prefix}: {problem}") from None


_YamlBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: several times faster
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictYamlLoader(_YamlBase):  # type: ignore[misc]  # its base is chosen at run time: typed Any
    """Safe loader that rejects duplicate keys (merge keys ``<<`` may still be overridden, as YAML intends).

    The check runs in ``flatten_mapping``, which the constructor calls on every mapping before it merges
    ``<<`` entries into it (the only change ever made to a node), so each mapping is checked as written.
    """

    def flatten_mapping(self, node: Any) -> None:
        checked: set[int] = self.__dict__.setdefault("_llmsim_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            self._reject_duplicate_keys(node)
        super().flatten_mapping(node)

    def _reject_duplicate_keys(self, node: Any) -> None:
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if earlier is not key_node:
                mark = key_node.start_mark
                raise _FileProblem(
                    f"duplicate key {_shown(key)} (first on line {earlier.start_mark.line + 1}); "
                    "each key may appear only once in a mapping",
                    (mark.line + 1, mark.column + 1),
                )


def _check_yaml_events(text: str) -> None:
    """Bound depth, expanded size and recursion of aliases on the event stream, before composing anything.

    Aliases share nodes, so a few hundred bytes can stand for billions of values; each anchor's expanded size
    is computed once (memoised by anchor) and every alias adds it to the running totals.
    """
    expanded: dict[str, tuple[int, int, int]] = {}  # anchor -> (values, characters, depth)
    open_anchors: set[str] = set()
    stack: list[list[Any]] = []  # open collections: [anchor, values, characters, depth of children]
    total_nodes = total_chars = 0

    def where(event: Any) -> tuple[int, int]:
        return event.start_mark.line + 1, event.start_mark.column + 1

    def add(values: int, chars: int, depth: int) -> None:
        if stack:
            frame = stack[-1]
            frame[1] += values
            frame[2] += chars
            frame[3] = max(frame[3], depth)

    for event in yaml.parse(text, Loader=_YamlBase):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) + 1 > MAX_NESTING_DEPTH:
                raise _FileProblem(_too_deep(), where(event))
            total_nodes += 1
            stack.append([event.anchor, 1, 0, 0])
            if event.anchor:
                open_anchors.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, values, chars, depth = stack.pop()
            if anchor:
                expanded[anchor] = (values, chars, depth + 1)
                open_anchors.discard(anchor)
            add(values, chars, depth + 1)
        elif isinstance(event, yaml.ScalarEvent):
            total_nodes += 1
            total_chars += len(event.value)
            if event.anchor:
                expanded[event.anchor] = (1, len(event.value), 0)
            add(1, len(event.value), 0)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise _FileProblem(f"alias *{event.anchor} refers to a node that contains it; recursive "
                                   "structures are not allowed in a scenario file", where(event))
            if event.anchor not in expanded:
                continue  # an undefined alias: the composer reports it
            values, chars, depth = expanded[event.anchor]
            if len(stack) + depth > MAX_NESTING_DEPTH:
                raise _FileProblem(f"alias *{event.anchor}: {_too_deep()}", where(event))
            total_nodes += values
            total_chars += chars
            add(values, chars, depth)
        else:
            continue
        if total_nodes > MAX_EXPANDED_NODES:
            raise _FileProblem(_too_many_nodes("YAML aliases expand the file to"), where(event))
        if total_chars > MAX_EXPANDED_CHARS:
            raise _FileProblem(
                f"YAML aliases expand the file to more than {MAX_EXPANDED_CHARS:,} characters of text, the limit "
                "(MAX_EXPANDED_CHARS) for a scenario file; use fewer aliases", where(event))


def _load_yaml(path: Path, text: str) -> Any:
    try:
        _check_yaml_events(text)
        loader = _StrictYamlLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _FileProblem as exc:
        prefix = f"{path}:{exc.where[0]}:{exc.where[1]}" if exc.where else str(path)
        raise ScenarioError(f"{prefix}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own guard, deeper than ours: name our limit
            raise ScenarioError(f"{where}: {_too_deep()}") from None
        raise ScenarioError(f"{where}: invalid YAML: {problem}; fix the syntax") from None
    except RecursionError:
        raise ScenarioError(f"{path}: {_too_deep()}") from None
    except (ValueError, OverflowError) as exc:  # a value the constructor cannot build (huge int, bad date)
        raise ScenarioError(f"{path}: invalid YAML value: {exc}") from None


def read_scenario_data(path: Path) -> Any:
    """Parse a JSON or YAML file within the limits; raise ScenarioError naming the file, position and limit."""
    text = _read_text(path)
    return _load_json(path, text) if path.suffix == ".json" else _load_yaml(path, text)


# -- validation ------------------------------------------------------------------------------------------------
def _no_scenarios(path: Path, why: str) -> ScenarioError:
    return ScenarioError(f"{path}: the file has no scenarios ({why}); add at least one scenario object with "
                         "'name' and 'variables'")


def _split_document(path: Path, data: Any) -> tuple[dict[str, Any], list[Any], Any]:
    """Return (defaults, raw scenarios, the ``queries`` value or None) for the three accepted shapes."""
    if data is None:
        raise _no_scenarios(path, "it is empty")
    if isinstance(data, list):
        if not data:
            raise _no_scenarios(path, "an empty list")
        return {}, data, None
    if isinstance(data, dict):
        if not data:
            raise _no_scenarios(path, "an empty object")
        if "scenarios" not in data and "queries" not in data:
            return {}, [data], None
        unknown = sorted(set(data) - {"scenarios", "defaults", "queries"}, key=str)
        if unknown:
            raise ScenarioError(
                f"{path}: unknown top-level field(s) {', '.join(map(_shown, unknown))}; "
                "a suite object may only have 'scenarios', 'defaults' and 'queries'"
            )
        scenarios = data.get("scenarios", [])
        defaults = data.get("defaults", {})
        if not isinstance(scenarios, list):
            raise ScenarioError(f"{path}: field 'scenarios' must be a list of scenario objects "
                                f"(got {_shown(scenarios)})")
        if not scenarios and "queries" not in data:
            raise _no_scenarios(path, "'scenarios' is an empty list")
        if not isinstance(defaults, dict):
            raise ScenarioError(f"{path}: field 'defaults' must be an object of scenario fields "
                                f"(got {_shown(defaults)})")
        if "name" in defaults:
            raise ScenarioError(f"{path}: field 'defaults.name' is not allowed; names are per scenario")
        try:
            # (a placeholder script: 'customer: proceed' in the defaults needs the 'turns' each scenario gives)
            Scenario.model_validate({"turns": ["-"], **defaults, "name": "defaults"})
        except ValidationError as exc:
            raise ScenarioError(f"{path}: {_describe_validation_error(exc, prefix='defaults.')}") from None
        return defaults, scenarios, data.get("queries")
    raise ScenarioError(
        f"{path}: expected a list of scenarios, an object with 'scenarios', or one scenario object; "
        f"got {type(data).__name__}"
    )


def _merge_defaults(defaults: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **raw}
    if isinstance(defaults.get("variables"), dict) and isinstance(raw.get("variables"), dict):
        merged["variables"] = {**defaults["variables"], **raw["variables"]}
    return merged


def _describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        field = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else f"{prefix}(scenario)"
        message = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the README for the scenario fields)"
        elif err["type"].startswith(("int_", "float_")) and isinstance(value, bool):
            message = f"{message} (got {value!r}: true/false is not a number)"
        elif err["type"].startswith(("int_", "float_")) and isinstance(value, str) and _is_number(value):
            message = f"{message} (got {_shown(value)}: write numbers without quotes)"
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            message = f"{message} (got {_shown(value)})"
        parts.append(f"field '{field}': {message}")
    return "; ".join(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _item_name(base: str, index: int, taken: set[str]) -> str:
    """A generated item name that is no real scenario name of the file and not used yet."""
    candidate, attempt = f"{base}#{index}", 1
    while candidate in taken:
        attempt += 1
        candidate = f"{base}#{index}-{attempt}"
    return candidate


def load_scenario_file(path: Path) -> list[ScenarioEntry]:
    """Load every scenario slot of ``path``. Raises ScenarioError only if the whole file is unusable."""
    defaults, raw_scenarios, queries = _split_document(path, read_scenario_data(path))
    if len(raw_scenarios) > MAX_SCENARIOS_PER_FILE:
        raise ScenarioError(f"{path}: {len(raw_scenarios):,} scenarios, over the limit of "
                            f"{MAX_SCENARIOS_PER_FILE:,} per file (MAX_SCENARIOS_PER_FILE); split the file")
    raw_names = [raw.get("name") if isinstance(raw, dict) else None for raw in raw_scenarios]
    # Real (valid) names always keep their name; generated ones must never take a real name.
    taken: set[str] = {name for name in raw_names if isinstance(name, str) and name_problem(name) is None}
    used: set[str] = set()
    entries: list[ScenarioEntry] = []
    for index, (raw, raw_name) in enumerate(zip(raw_scenarios, raw_names, strict=True)):
        shown_name = isinstance(raw_name, str) and raw_name.strip()
        label = f"#{index} {_shown(raw_name)}" if shown_name else f"#{index}"
        valid_name = raw_name if isinstance(raw_name, str) and name_problem(raw_name) is None else None
        if valid_name is not None and valid_name not in used:
            item_name = valid_name
        else:
            item_name = _item_name(valid_name if valid_name is not None else "scenario", index, taken | used)
        used.add(item_name)
        problem: str | None = None
        scenario: Scenario | None = None
        if not isinstance(raw, dict):
            problem = f"must be an object with 'name' and 'variables', got {type(raw).__name__}"
        elif valid_name is not None and item_name != valid_name:
            problem = (f"field 'name': duplicate name {_shown(raw_name)} in this file; "
                       "names must be unique per file")
        else:
            try:
                scenario = Scenario.model_validate(_merge_defaults(defaults, raw))
            except ValidationError as exc:
                problem = _describe_validation_error(exc)
        entries.append(ScenarioEntry(index, item_name, scenario,
                                     None if problem is None else f"{path}: scenario {label}: {problem}"))
    if queries is not None:
        entries.extend(_query_entries(path, queries, defaults, len(entries), taken | used))
    return entries


def _problem_name(base: str, index: int, used: set[str]) -> str:
    """The item name of a bad row of a CSV of queries (``queries.csv:12``), not used yet (added to ``used``)."""
    name = base if base not in used else _item_name(base, index, used)
    used.add(name)
    return name


def _query_entries(path: Path, queries: Any, defaults: dict[str, Any], first: int,
                   used: set[str]) -> Iterator[ScenarioEntry]:
    """One entry per conversation of the CSV the file's ``queries`` names (``queries_csv``), valid or not; a bad
    ``queries`` field is one entry naming it. ``used``: the names taken so far (updated)."""
    from pytest_llmsim.model.queries_csv import QueriesSpec, RowProblem, iter_query_rows

    try:
        spec = QueriesSpec.parse(queries, path.parent)
    except ValueError as exc:
        yield ScenarioEntry(first, _item_name("queries", first, used), None, f"{path}: field 'queries': {exc}")
        return
    index = first
    repeats: dict[str, int] = {}
    for row in iter_query_rows(spec):
        if isinstance(row, RowProblem):
            name = _problem_name(f"{spec.csv.name}:{row.line}" if row.line else spec.csv.name, index, used)
            yield ScenarioEntry(index, name, None, f"{path}: queries: {row.message}")
            index += 1
            continue
        problem = name_problem(row.id)
        name = row.id
        if name in used:  # a later conversation of the same id: <id>#2, <id>#3, ...
            n = repeats.get(row.id, 1) + 1
            while f"{row.id}#{n}" in used:
                n += 1
            repeats[row.id] = n
            name = f"{row.id}#{n}"
        used.add(name)
        scenario: Scenario | None = None
        message: str | None = None
        if problem is not None:
            message = (f"{path}: queries: {spec.csv}:{row.line}: column {spec.id!r}: the id {_shown(row.id)} "
                       f"{problem}")
            name = _problem_name(f"{spec.csv.name}:{row.line}", index, used)
        else:
            raw = {"name": name, "turns": [row.query, *row.followups], "first_speaker": "client"}
            try:
                scenario = Scenario.model_validate(_merge_defaults(defaults, raw))
            except ValidationError as exc:
                message = f"{path}: queries: {spec.csv}:{row.line}: {_describe_validation_error(exc)}"
        yield ScenarioEntry(index, name, scenario, message)
        index += 1
