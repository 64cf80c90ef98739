"""Scenario files: parsing, validation and the per-scenario model.

A scenario file is JSON or YAML in one of three shapes:

* a list of scenarios ``[{"name": ..., "variables": {...}}, ...]`` (the reference format);
* an object ``{"defaults": {...}, "scenarios": [...]}`` whose ``defaults`` are merged into every scenario;
* a single scenario object ``{"name": ..., "variables": {...}}``.

Problems are reported per scenario so one bad scenario never hides the others: ``load_scenario_file``
returns one ``ScenarioEntry`` per scenario, valid or not, and raises only when the file as a whole cannot
be read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ScenarioError

_TAG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RoleOverride(BaseModel):
    """Per-scenario settings for one role (agent, client or evaluator)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    template: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


class Scenario(BaseModel):
    """One conversation to simulate and judge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    min_score: int | None = Field(default=None, ge=1, le=3)
    max_turns: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0)
    tags: tuple[str, ...] = ()
    skip: bool | str = False
    xfail: bool | str = False
    first_speaker: Literal["client", "agent"] | None = None
    turns: tuple[str, ...] | None = None
    agent: RoleOverride | None = None
    client: RoleOverride | None = None
    evaluator: RoleOverride | None = None

    @field_validator("name")
    @classmethod
    def _name_is_usable_as_test_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if "::" in value or "/" in value:
            raise ValueError("must not contain '::' or '/' (it becomes the pytest test id)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags_are_marker_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tag in value:
            if not _TAG_RE.match(tag):
                raise ValueError(f"tag {tag!r} is not a valid marker name (letters, digits, '_')")
        return value

    @field_validator("turns")
    @classmethod
    def _turns_not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("must list at least one customer message (or be left out)")
        return value

    @property
    def seed(self) -> int | None:
        """The scenario's ``SEED`` variable, if it has one."""
        raw = self.variables.get("SEED")
        if raw is None or isinstance(raw, bool):
            return None
        try:
            return int(raw)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ScenarioEntry:
    """One scenario slot in a file: a valid ``scenario`` or a ``problem`` message, never both."""

    index: int
    item_name: str
    scenario: Scenario | None
    problem: str | None


def read_scenario_data(path: Path) -> Any:
    """Parse a JSON or YAML file; raise ScenarioError with the file and position on a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(
                f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}; fix the syntax"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(f"{where}: invalid YAML: {problem}; fix the syntax") from None


def _split_document(path: Path, data: Any) -> tuple[dict[str, Any], list[Any]]:
    """Return (defaults, raw scenarios) for the three accepted shapes."""
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict):
        if "scenarios" in data:
            unknown = sorted(set(data) - {"scenarios", "defaults"})
            if unknown:
                raise ScenarioError(
                    f"{path}: unknown top-level field(s) {', '.join(map(repr, unknown))}; "
                    "a suite object may only have 'scenarios' and 'defaults'"
                )
            scenarios = data["scenarios"]
            defaults = data.get("defaults") or {}
            if not isinstance(scenarios, list):
                raise ScenarioError(f"{path}: field 'scenarios' must be a list of scenario objects")
            if not isinstance(defaults, dict):
                raise ScenarioError(f"{path}: field 'defaults' must be an object of scenario fields")
            if "name" in defaults:
                raise ScenarioError(f"{path}: field 'defaults.name' is not allowed; names are per scenario")
            return defaults, scenarios
        return {}, [data]
    shown = "empty" if data is None else type(data).__name__
    raise ScenarioError(
        f"{path}: expected a list of scenarios, an object with 'scenarios', or one scenario object; got {shown}"
    )


def _merge_defaults(defaults: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **raw}
    if isinstance(defaults.get("variables"), dict) and isinstance(raw.get("variables"), dict):
        merged["variables"] = {**defaults["variables"], **raw["variables"]}
    return merged


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(scenario)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the README for the scenario fields)"
        elif "input" in err and err["type"] not in ("missing",):
            message = f"{message} (got {err['input']!r})"
        parts.append(f"field '{field}': {message}")
    return "; ".join(parts)


def load_scenario_file(path: Path) -> list[ScenarioEntry]:
    """Load every scenario slot of ``path``. Raises ScenarioError only if the whole file is unusable."""
    defaults, raw_scenarios = _split_document(path, read_scenario_data(path))
    entries: list[ScenarioEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_scenarios):
        label = f"#{index}"
        raw_name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(raw_name, str) and raw_name.strip():
            label = f"#{index} {raw_name!r}"
        item_name = raw_name if isinstance(raw_name, str) and raw_name.strip() else f"scenario{index}"
        if item_name in seen:
            item_name = f"{item_name}#{index}"
        if not isinstance(raw, dict):
            problem = f"must be an object with 'name' and 'variables', got {type(raw).__name__}"
            entries.append(ScenarioEntry(index, item_name, None, f"{path}: scenario {label}: {problem}"))
            seen.add(item_name)
            continue
        if isinstance(raw_name, str) and raw_name in seen:
            entries.append(
                ScenarioEntry(
                    index, item_name, None,
                    f"{path}: scenario {label}: field 'name': duplicate name {raw_name!r} in this file; "
                    "names must be unique per file",
                )
            )
            seen.add(item_name)
            continue
        try:
            scenario = Scenario.model_validate(_merge_defaults(defaults, raw))
        except ValidationError as exc:
            entries.append(
                ScenarioEntry(index, item_name, None,
                              f"{path}: scenario {label}: {_describe_validation_error(exc)}")
            )
        else:
            entries.append(ScenarioEntry(index, item_name, scenario, None))
        seen.add(item_name)
    return entries
