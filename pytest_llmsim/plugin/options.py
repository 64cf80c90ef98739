"""The option table's pytest side: register its rows with pytest and read them once, at ``pytest_configure``.

The table and its resolution are ``config.options`` and ``config.resolve`` (no pytest), shared with the ``llmsim``
command and the service; this module only connects them to pytest's parser and config (pytest finds its own ini
file; ``config.resolve.find_ini`` finds the same one for ``llmsim``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from pytest_llmsim.config.options import OPTIONS, Option, ResolvedOptions, shown_default
from pytest_llmsim.config.resolve import pytest_rows
from pytest_llmsim.config.resolve import resolve as resolve_settings
from pytest_llmsim.errors import ConfigError


def add_options(parser: pytest.Parser, rows: Iterable[Option] = OPTIONS) -> None:
    """Register ``rows`` with pytest. Ini keys are registered without a default, so that ``resolve`` can tell a
    value the user wrote from one left out, even when the two are equal (the table's default applies then)."""
    group = parser.getgroup("llmsim", "conversational regression testing of LLM agents (pytest-llmsim)")
    for row in rows:
        default_text = shown_default(row)
        if row.flag:
            extra: dict[str, Any] = {"choices": list(row.choices)} if row.kind == "choice" else {}
            if row.kind == "bool":  # a switch: present = true
                extra = {"action": "store_const", "const": "true"}
            else:
                extra["metavar"] = row.metavar or "VALUE"
            if row.const is not None:  # --flag alone means --flag=const
                extra.update(nargs="?", const=row.const)
            text = f"{row.help} Default {default_text}; ini {row.ini}" + (f"; env {row.env}" if row.env else "")
            group.addoption(row.flag, dest=row.dest, default=None,
                            help=(text + ".").replace("%", "%%"), **extra)  # argparse %-formats help
        if row.kind == "lines":  # no default here either: an empty list is a value left out
            parser.addini(row.ini, f"{row.help} Default {default_text}.", type="linelist", default=[])
        else:
            parser.addini(row.ini, f"{row.help} Default {default_text}.", default=None)



def resolve(config: pytest.Config, rows: Iterable[Option] = OPTIONS) -> ResolvedOptions:
    """Read ``rows`` (those pytest reads: ``config.resolve.pytest_rows``) from pytest's command line, the
    environment and the ini file pytest found, through the one resolver ``llmsim`` uses too; UsageError on a bad
    value."""
    rows = pytest_rows(rows)
    cli = {row.ini: config.getoption(row.dest, default=None) for row in rows if row.flag}
    ini = {row.ini: config.getini(row.ini) for row in rows}
    ini_dir = config.inipath.parent if config.inipath is not None else config.rootpath
    try:
        return resolve_settings(rows, cli=cli, ini=ini, invocation_dir=config.invocation_params.dir,
                                ini_dir=ini_dir)
    except ConfigError as exc:
        raise pytest.UsageError(f"llmsim: {exc}") from None
