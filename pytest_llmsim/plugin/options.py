"""The option table's pytest side: register its rows with pytest and read them once, at ``pytest_configure``.

The table and its resolution are ``config.options`` (no pytest), shared with the ``llmsim`` command and the
service; this module only connects them to pytest's parser and config.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest

from pytest_llmsim.config.options import (
    OPTIONS,
    Option,
    ResolvedOptions,
    endpoint_configured,
    resolve_values,
    shown_default,
)
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.model.settings import resolve_http_backend


def add_options(parser: pytest.Parser, rows: Iterable[Option] = OPTIONS) -> None:
    """Register ``rows`` with pytest. Ini keys are registered without a default (except line lists), so that
    ``resolve`` can tell a value the user wrote from one left out, even when the two are equal."""
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
        if row.kind == "lines":
            parser.addini(row.ini, f"{row.help} Default {default_text}.", type="linelist", default=row.default)
        else:
            parser.addini(row.ini, f"{row.help} Default {default_text}.", default=None)



def resolve(config: pytest.Config, rows: Iterable[Option] = OPTIONS) -> ResolvedOptions:
    """Read ``rows`` from pytest's command line, the environment and the ini file; UsageError on a bad value."""
    rows = list(rows)
    cli = {row.ini: config.getoption(row.dest, default=None) for row in rows if row.flag}
    ini = {row.ini: config.getini(row.ini) for row in rows}
    ini_dir = config.inipath.parent if config.inipath is not None else config.rootpath
    try:
        resolved = resolve_values(rows, cli=cli, env=os.environ, ini=ini,
                                  invocation_dir=config.invocation_params.dir, ini_dir=ini_dir,
                                  local=lambda values: not endpoint_configured(values))
        resolve_http_backend(resolved["llmsim_http_backend"], resolved["llmsim_base_url"] or None)
        if resolved["llmsim_agent"]:  # a bad agent spec is a usage error before anything is collected
            from pytest_llmsim.agents.specs import parse_agent_spec

            parse_agent_spec(resolved["llmsim_agent"])
    except ConfigError as exc:
        raise pytest.UsageError(f"llmsim: {exc}") from None
    return resolved
