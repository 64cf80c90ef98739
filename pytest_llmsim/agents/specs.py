"""An ``agent:`` spec: parsed from a scenario or ``llmsim_agent``, its identity (the cache key part) and its
description for messages."""


from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pytest_llmsim.errors import ConfigError
from pytest_llmsim.model.settings import redact_url

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec

SHOWN = 200  # characters of an agent's reply or text quoted in an error




# -- specs ----------------------------------------------------------------------------------------------------------
def parse_agent_spec(text: str, where: str = "llmsim_agent") -> AgentSpec | None:
    """The suite-wide agent spec from ini/command-line text: an inline YAML/JSON mapping such as
    ``{python: "bots.shop:ShopBot"}``; ConfigError naming ``where`` and the field otherwise. Empty: None."""
    if not text or not text.strip():
        return None
    import yaml
    from pydantic import ValidationError

    from pytest_llmsim.model.scenario import AgentSpec

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not a YAML/JSON mapping ({str(exc).splitlines()[0]}); write e.g. "
                          "{python: \"bots.shop:ShopBot\"}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping such as {{python: \"bots.shop:ShopBot\"}}, got {text!r}")
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(str(p) for p in err['loc']) or 'agent'}': "
                             f"{err['msg'].removeprefix('Value error, ')}" for err in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None
    if spec.kind == "prompt":
        raise ConfigError(f"{where} must name one of python, http, openai or a framework adapter "
                          "(openai_agents, langgraph, ...); the prompt agent is set with "
                          "llmsim_agent_model / llmsim_agent_template / llmsim_agent_temperature / "
                          "llmsim_agent_max_tokens")
    return spec


@functools.cache
def _object_spec_class() -> type[AgentSpec]:
    from pydantic import PrivateAttr

    from pytest_llmsim.model.scenario import AgentSpec

    class ObjectAgentSpec(AgentSpec):
        """A python agent given as the object itself (the ``llmsim`` fixture's ``agent=``), not an import path:
        ``python`` only names it (``module:qualname``) in messages and cache keys; ``_target`` is the object.
        A ``Scenario`` keeps this instance as it is (pydantic does not revalidate model instances)."""

        _target: Any = PrivateAttr(default=None)

    return ObjectAgentSpec


def object_agent_spec(target: Any) -> AgentSpec:
    """An agent spec for an in-memory python agent: a callable answering one turn, a class, or an
    ``agent_factory`` function, exactly as ``{python: "module:name"}`` would import it. TypeError if ``target``
    is not callable."""
    if not callable(target):
        raise TypeError(f"must be a callable, a class, an agent_factory function or a spec mapping such as "
                        f"{{\"http\": {{...}}}}; got {type(target).__name__} {shorten(repr(target))}")
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    spec = _object_spec_class().model_construct(python=f"{module}:{name}")
    spec._target = target  # type: ignore[attr-defined]  # ObjectAgentSpec's (made lazily: no name to cast to)
    return spec


def object_agent_target(spec: AgentSpec) -> Any:
    """The in-memory object of a spec made by ``object_agent_spec``; None for any other spec."""
    return getattr(spec, "_target", None) if type(spec) is _object_spec_class() else None


def spec_identity(spec: AgentSpec) -> str:
    """What names the agent in cache keys and messages: never a header value or a key."""
    if spec.python is not None:
        return spec.python
    adapter = getattr(spec, spec.kind, None)
    if isinstance(adapter, str):  # a framework adapter: the import path of the user's object
        return adapter
    if spec.http is not None:
        return redact_url(spec.http.url)
    assert spec.openai is not None
    return f"{redact_url(spec.openai.base_url).rstrip('/')} {spec.openai.model}"


def describe_spec(spec: AgentSpec) -> str:
    return f"{spec.kind} agent {spec_identity(spec)!r}"


def shorten(text: str, limit: int = SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


