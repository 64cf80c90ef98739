"""jinja2 prompt templates with strict variables.

Templates are rendered in a sandbox with ``StrictUndefined``: a variable the scenario does not define is
an error naming the template, the variable and the scenario. Variable *values* are data, never templates,
so a value such as ``{{ 7*7 }}`` reaches the model literally. A rendered prompt is bounded
(``MAX_PROMPT_CHARS``): rendering stops there and the scenario errors instead of sending a huge prompt.

A template is looked up in the project's prompts directory first (when it exists), then among the generic
templates the package ships (``PACKAGE_TEMPLATES_DIR``: ``agent.j2``, ``client.j2``, ``evaluator.j2``), which
use the scenario fields ``persona``, ``goal``, ``criteria`` and ``language``. So a project without a prompts
folder runs scenarios written with those fields only, and a project template of the same name always wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from pytest_llmsim.errors import PromptError

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.model.settings import RunSettings

_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined")

MAX_PROMPT_CHARS = 200_000
"""Longest rendered prompt (about 50 000 tokens); no sane template with sane variables comes close."""

PACKAGE_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
"""The generic templates shipped with the package; a project's prompts directory overrides them by name."""


# Sent as the first user message to whichever side opens the call, so every request has a user turn. Here, at
# the bottom of the engine, because the conversation, the client's divergence message and the agents all use it.
OPENING_CUE = "(The call has just been connected. Say your first line.)"

class PromptRenderer:
    """Renders templates from the project's prompts directory, else from the package's generic ones.

    Compiled templates are cached by jinja2's loader.
    """

    def __init__(self, prompts_dir: Path) -> None:
        self.prompts_dir = Path(prompts_dir)
        self._variables_used: dict[str, frozenset[str] | None] = {}
        # Where templates are looked up, first match wins; a missing project directory is simply empty.
        self.search_path: tuple[Path, ...] = (self.prompts_dir, PACKAGE_TEMPLATES_DIR)
        self._env = SandboxedEnvironment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(path)) for path in self.search_path]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates don't change during a run: skip a stat() per render
        )
        self._templates: dict[str, jinja2.Template] = {}

    def render(self, template_name: str, context: dict[str, Any], *, scenario_label: str) -> str:
        try:
            template = self._templates.get(template_name)
            if template is None:  # jinja2's own cache is an LRU with a lock per lookup: keep ours
                template = self._templates[template_name] = self._env.get_template(template_name)
            chunks: list[str] = []
            size = 0
            for chunk in template.generate(**context):  # streamed: stop at the limit, never build a huge prompt
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PROMPT_CHARS:
                    raise PromptError(_too_long(template_name, scenario_label, size, context))
            return "".join(chunks).strip()
        except jinja2.TemplateNotFound as exc:
            # The missing one may be a template that ``template_name`` includes or extends.
            missing = exc.name if isinstance(exc.name, str) else template_name
            where = "" if missing == template_name else f" (used by {template_name!r})"
            project = "" if self.prompts_dir.is_dir() else ", which does not exist"
            raise PromptError(
                f"{scenario_label}: prompt template {missing!r}{where} not found in the project's prompts "
                f"directory {self.prompts_dir}{project}, nor among the package's templates in "
                f"{PACKAGE_TEMPLATES_DIR} (agent.j2, client.j2, evaluator.j2); create it in "
                f"{self.prompts_dir} or set llmsim_prompts_dir / the role's 'template'"
            ) from None
        except jinja2.UndefinedError as exc:
            match = _UNDEFINED_RE.search(str(exc))
            variable = match.group(1) if match else str(exc)
            raise PromptError(
                f"{scenario_label}: template {template_name!r} uses undefined variable {variable!r}; "
                "add it to the scenario's 'variables' (or the file's 'defaults')"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(
                f"{scenario_label}: template {exc.filename or template_name}:{exc.lineno}: "
                f"syntax error: {exc.message}"
            ) from None

    def variables_used(self, template_name: str) -> frozenset[str] | None:
        """The variables ``template_name`` refers to, or None when that cannot be told (it includes, imports or
        extends other templates, or cannot be loaded or parsed: ``render`` reports those problems). Worked out
        once per template: templates do not change during a run."""
        if template_name not in self._variables_used:
            self._variables_used[template_name] = self._find_variables(template_name)
        return self._variables_used[template_name]

    def _find_variables(self, template_name: str) -> frozenset[str] | None:
        try:
            loader = self._env.loader
            assert loader is not None  # __init__ gives the environment one
            source, _, _ = loader.get_source(self._env, template_name)
            parsed = self._env.parse(source)
        except (jinja2.TemplateNotFound, jinja2.TemplateSyntaxError):
            return None
        if any(True for _ in jinja2.meta.find_referenced_templates(parsed)):
            return None
        return frozenset(jinja2.meta.find_undeclared_variables(parsed))


def _too_long(template_name: str, scenario_label: str, size: int, context: dict[str, Any]) -> str:
    sizes = {name: len(value) if isinstance(value, str) else len(str(value)) for name, value in context.items()}
    largest = max(sizes, key=lambda name: sizes[name], default=None)
    hint = f"; the largest variable is {largest!r} ({sizes[largest]:,} characters)" if largest is not None else ""
    return (f"{scenario_label}: template {template_name!r} renders a prompt of at least {size:,} characters, over "
            f"the limit of {MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS){hint}; shorten that value or the template")


def template_context(scenario: Scenario, settings: RunSettings, **extra: Any) -> dict[str, Any]:
    """What every prompt template sees: the scenario's variables plus the names the plugin sets (reserved in
    scenario files). One place, so the customer's, the agent's and the judge's templates agree.

    ``persona``, ``goal`` and ``description`` are ``""`` and ``criteria`` is ``[]`` when the scenario leaves
    them out, so a template can always test them (``{% if persona %}``) without an undefined-variable error.
    ``language`` is the scenario's own, else the run's (``llmsim_language``).
    """
    return {
        **scenario.variables,
        "scenario_name": scenario.name,
        "description": scenario.description or "",
        "persona": scenario.persona or "",
        "goal": scenario.goal or "",
        "criteria": list(scenario.criteria or ()),
        "end_marker": settings.end_marker,
        "language": scenario.language or settings.language,
        **extra,
    }
