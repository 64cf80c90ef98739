"""The README documents every option the plugin registers (keeps the configuration table honest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_option_and_ini_key_is_in_the_readme(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"(--llmsim-[a-z0-9-]+)", help_text))
    ini_keys = set(re.findall(r"^\s+(llmsim_[a-z0-9_]+)", help_text, re.MULTILINE))
    assert len(options) > 10 and len(ini_keys) > 20, "the help text should list the plugin's options"
    missing = sorted(name for name in options | ini_keys if f"`{name}" not in README)
    assert missing == [], f"document these in README.md: {missing}"


def test_readme_configuration_table_is_generated_from_the_option_table() -> None:
    from pytest_llmsim.options import markdown_table

    assert markdown_table() in README, "regenerate the README table with pytest_llmsim.options.markdown_table()"
