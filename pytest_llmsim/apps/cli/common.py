"""What every ``llmsim`` subcommand shares: exit codes, the usage error, the settings and the common flags.

Settings: ``resolve_options`` asks the one resolver pytest uses too (``config.resolve``): the ini file pytest would
find from the same paths and working folder, the environment variables of the option table, then the flags. A
flag that sets an option is an argparse argument whose ``dest`` is the option's ini key (``dest="llmsim_port"``);
``-o KEY=VALUE`` sets any ini key.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmsim.config.options import OPTIONS, ResolvedOptions
from pytest_llmsim.config.resolve import find_ini, resolve
from pytest_llmsim.errors import ConfigError

OK, FAILED_EXIT, USAGE, INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: exit 2, one line
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def add_common_arguments(sub: argparse.ArgumentParser) -> None:
    """``--verbose``, ``-o KEY=VALUE`` and ``--base-url``: for a subcommand that resolves the settings."""
    sub.add_argument("--verbose", action="store_true", help="show the logs live on stderr")
    sub.add_argument("-o", "--set", action="append", metavar="KEY=VALUE",
                     help="set any llmsim ini key (e.g. -o llmsim_prompts_dir=prompts)")
    sub.add_argument("--base-url", dest="llmsim_base_url", metavar="URL",
                     help="OpenAI-compatible endpoint (env OPENAI_BASE_URL)")


def resolve_options(paths: Sequence[Path], flags: Mapping[str, Any], env: Mapping[str, str] | None = None, *,
                    invocation_dir: Path | None = None) -> ResolvedOptions:
    """Every option's value for this command, as ``pytest PATHS`` started in the same folder would resolve it:
    ``flags`` (ini key -> value), the environment, the ini file pytest would find (``config.resolve``)."""
    cwd = invocation_dir if invocation_dir is not None else Path.cwd()
    try:
        ini = find_ini(list(paths), cwd)
        return resolve(OPTIONS, cli=flags, ini=ini.values, invocation_dir=cwd, ini_dir=ini.folder, env=env,
                       flag_names={"llmsim_base_url": "--base-url"})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _set_values(pairs: Sequence[str]) -> dict[str, str]:
    """``-o llmsim_key=value`` pairs (any ini key of the option table)."""
    known = {row.ini for row in OPTIONS}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise UsageError(f"-o {pair!r}: give KEY=VALUE with an llmsim ini key (e.g. llmsim_model=gpt-4o-mini)")
        values[key] = value
    return values


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The options the command line sets: ``-o`` pairs, then every argument whose ``dest`` is an ini key."""
    flags: dict[str, Any] = _set_values(getattr(args, "set", None) or [])
    known = {row.ini for row in OPTIONS}
    for key, value in vars(args).items():
        if key in known and value is not None:
            flags[key] = str(value)
    return flags
