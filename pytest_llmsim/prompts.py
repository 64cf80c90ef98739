"""jinja2 prompt templates with strict variables.

Templates are rendered in a sandbox with ``StrictUndefined``: a variable the scenario does not define is
an error naming the template, the variable and the scenario. Variable *values* are data, never templates,
so a value such as ``{{ 7*7 }}`` reaches the model literally. A rendered prompt is bounded
(``MAX_PROMPT_CHARS``): rendering stops there and the scenario errors instead of sending a huge prompt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import PromptError

if TYPE_CHECKING:
    from .scenario import Scenario
    from .settings import RunSettings

_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined")

MAX_PROMPT_CHARS = 200_000
"""Longest rendered prompt (about 50 000 tokens); no sane template with sane variables comes close."""


class PromptRenderer:
    """Renders templates from one directory; compiled templates are cached by jinja2's loader."""

    def __init__(self, prompts_dir: Path) -> None:
        self.prompts_dir = Path(prompts_dir)
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.prompts_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates don't change during a run: skip a stat() per render
        )

    def render(self, template_name: str, context: dict[str, Any], *, scenario_label: str) -> str:
        try:
            template = self._env.get_template(template_name)
            chunks: list[str] = []
            size = 0
            for chunk in template.generate(**context):  # streamed: stop at the limit, never build a huge prompt
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PROMPT_CHARS:
                    raise PromptError(_too_long(template_name, scenario_label, size, context))
            return "".join(chunks).strip()
        except jinja2.TemplateNotFound:
            raise PromptError(
                f"{scenario_label}: prompt template {template_name!r} not found in {self.prompts_dir}; "
                "create it or set llmsim_prompts_dir / the role's 'template'"
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


def _too_long(template_name: str, scenario_label: str, size: int, context: dict[str, Any]) -> str:
    sizes = {name: len(value) if isinstance(value, str) else len(str(value)) for name, value in context.items()}
    largest = max(sizes, key=lambda name: sizes[name], default=None)
    hint = f"; the largest variable is {largest!r} ({sizes[largest]:,} characters)" if largest is not None else ""
    return (f"{scenario_label}: template {template_name!r} renders a prompt of at least {size:,} characters, over "
            f"the limit of {MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS){hint}; shorten that value or the template")


def template_context(scenario: Scenario, settings: RunSettings, **extra: Any) -> dict[str, Any]:
    """What every prompt template sees: the scenario's variables plus the names the plugin sets (reserved in
    scenario files). One place, so the customer's, the agent's and the judge's templates agree."""
    return {
        **scenario.variables,
        "scenario_name": scenario.name,
        "description": scenario.description or "",
        "end_marker": settings.end_marker,
        "language": settings.language,
        **extra,
    }
