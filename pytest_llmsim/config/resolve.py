"""The one settings path: where the ini file is, and every option's value, for pytest and ``llmsim`` alike.

Both fronts call ``resolve`` with what they were given: pytest (``plugin.options``) with its parsed flags and the
ini values of the file pytest found itself; ``llmsim`` (``apps.cli``) with its flags and the ini file
``find_ini`` finds by pytest's own rules from the same arguments and working directory, so that from one
project folder ``pytest scenarios/`` and ``llmsim run scenarios/`` read the same file, the same environment
variables (each row's ``env``, in the option table) and so resolve the same settings.

Precedence, highest first: command line, environment, ini file, local-model default, default
(``options.resolve_values``). A front resolves the rows it reads: pytest leaves out the rows only ``llmsim`` and
its service read (``Option.pytest`` false: ``llmsim_port``, ``llmsim_host``, ...), so a ``PORT`` set in a shell
for something else never touches a pytest run.

Pure: no pytest import (the ``llmsim`` command and the service run without pytest).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_llmsim.config.options import OPTIONS, ROWS, Option, ResolvedOptions, endpoint_configured, resolve_values
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.model.settings import resolve_http_backend

__all__ = ["IniFile", "find_ini", "pytest_rows", "resolve"]


def pytest_rows(rows: Iterable[Option] = OPTIONS) -> list[Option]:
    """The rows pytest resolves: all but those only ``llmsim`` and its service read."""
    return [row for row in rows if row.pytest]


def resolve(rows: Iterable[Option], *, cli: Mapping[str, Any], ini: Mapping[str, Any], invocation_dir: Path,
            ini_dir: Path, env: Mapping[str, str] | None = None,
            flag_names: Mapping[str, str] | None = None) -> ResolvedOptions:
    """Every option of ``rows`` from the front's command-line values (ini key -> value), the environment and the
    ini values, checked as a whole; ConfigError naming the option (and where its value came from) otherwise.
    ``ini_dir``: the ini file's folder, or the rootdir without one (ini paths are relative to it).
    ``flag_names``: the front's own spelling of a flag, where it differs from the table's (``--base-url``)."""
    env = os.environ if env is None else env
    rows = list(rows)
    lines = {row.ini for row in rows if row.kind == "lines"}
    ini = {key: (value.splitlines() if key in lines and isinstance(value, str) else value)
           for key, value in ini.items()}
    resolved = resolve_values(rows, cli=cli, env=env, ini=ini, invocation_dir=invocation_dir, ini_dir=ini_dir,
                              local=lambda values: not endpoint_configured(values, env))
    base_url_flag = (flag_names or {}).get("llmsim_base_url") or ROWS["llmsim_base_url"].flag or ""
    _check_base_url(resolved, base_url_flag)
    resolve_http_backend(resolved["llmsim_http_backend"], resolved["llmsim_base_url"] or None)
    if resolved["llmsim_agent"]:  # a bad agent spec is a usage error before anything runs
        from pytest_llmsim.agents.specs import parse_agent_spec

        parse_agent_spec(resolved["llmsim_agent"])
    return resolved


def _check_base_url(resolved: ResolvedOptions, flag: str) -> None:
    """A base URL must be an http:// or https:// URL with a host (else every call would fail, exit 1, instead of
    the usage error it is)."""
    from urllib.parse import urlsplit

    value = resolved["llmsim_base_url"]
    if not value:
        return
    try:
        split = urlsplit(str(value))
        usable = split.scheme in ("http", "https") and bool(split.hostname)
        split.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        usable = False
    if not usable:
        source = resolved.source("llmsim_base_url")
        where = (f"{flag} (llmsim_base_url)" if source == "command line" else source[4:] if source.startswith("env ")
                 else "llmsim_base_url")
        raise ConfigError(f"{where}: {str(value)[:80]!r} is not an http:// or https:// URL with a host; give the "
                          "endpoint's base URL, e.g. http://127.0.0.1:8000/v1")


# -- the ini file, found as pytest finds it ---------------------------------------------------------------------
@dataclass(frozen=True)
class IniFile:
    """The ini file pytest would use (``path``, None without one), the rootdir it would choose, and the file's
    pytest values (strings, or lists and native values from TOML)."""

    path: Path | None
    rootdir: Path
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Where the ini values' relative paths start: the ini file's folder, else the rootdir (as pytest)."""
        return self.path.parent if self.path is not None else self.rootdir


def _pytest_major() -> int:
    try:
        return int(metadata.version("pytest").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 9


def _names() -> tuple[str, ...]:
    """The file names pytest looks for in each folder, in its order (``pytest.toml`` from pytest 9)."""
    toml = ("pytest.toml", ".pytest.toml") if _pytest_major() >= 9 else ()
    return (*toml, "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the ini file: {exc}") from None


def _read_ini(path: Path) -> Any:
    import iniconfig

    try:
        return iniconfig.IniConfig(str(path))
    except (OSError, UnicodeDecodeError, iniconfig.ParseError) as exc:
        raise ConfigError(f"{path}: cannot read the ini file: {exc}") from None


def _load(path: Path) -> dict[str, Any] | None:
    """The pytest values of ``path`` (one of ``_names``), or None when pytest would pass it over."""
    name = path.name
    if name in ("pytest.toml", ".pytest.toml"):
        table = _read_toml(path).get("pytest", {})
        return dict(table) if isinstance(table, dict) else {}
    if name == "pyproject.toml":
        tool = _read_toml(path).get("tool", {}).get("pytest", {})
        native = {k: v for k, v in tool.items() if k != "ini_options"} if isinstance(tool, dict) else {}
        ini_options = tool.get("ini_options") if isinstance(tool, dict) else None
        if native and ini_options is not None:
            raise ConfigError(f"{path}: cannot use both [tool.pytest] and [tool.pytest.ini_options] (pytest refuses "
                              "it too)")
        if native:
            return native
        if isinstance(ini_options, dict):
            return {k: v if isinstance(v, list) else str(v) for k, v in ini_options.items()}
        return None
    ini = _read_ini(path)
    section = "tool:pytest" if name == "setup.cfg" else "pytest"
    if section in ini:
        return dict(ini[section].items())
    if name == "setup.cfg" and "pytest" in ini:
        raise ConfigError(f"{path}: a [pytest] section in setup.cfg is not read by pytest; rename it [tool:pytest]")
    return {} if name in ("pytest.ini", ".pytest.ini") else None


def _locate(bases: Sequence[Path]) -> IniFile | None:
    """pytest's ``locate_config``: the first folder, from each of ``bases`` upwards, with a file of pytest values;
    else the first ``pyproject.toml`` seen (without values); else None."""
    names = _names()
    first_pyproject: Path | None = None
    for base in bases:
        for folder in (base, *base.parents):
            for name in names:
                path = folder / name
                if not path.is_file():
                    continue
                if name == "pyproject.toml" and first_pyproject is None:
                    first_pyproject = path
                values = _load(path)
                if values is not None:
                    return IniFile(path, folder, values)
    return IniFile(first_pyproject, first_pyproject.parent, {}) if first_pyproject is not None else None


def _common_ancestor(invocation_dir: Path, paths: Iterable[Path]) -> Path:
    ancestor: Path | None = None
    for path in paths:
        if not path.exists():
            continue
        if ancestor is None or path in ancestor.parents:
            ancestor = path
        elif ancestor not in path.parents and path != ancestor:
            ancestor = Path(os.path.commonpath([path, ancestor]))
    if ancestor is None:
        return invocation_dir
    return ancestor.parent if ancestor.is_file() else ancestor


def find_ini(args: Sequence[str | Path], invocation_dir: Path) -> IniFile:
    """The ini file and rootdir pytest would choose when started in ``invocation_dir`` with the paths ``args``
    (pytest's ``determine_setup`` without ``-c`` or ``--rootdir``): from the common folder of the paths (the
    invocation folder without any) upwards, the first folder with a ``pytest.toml``, ``pytest.ini`` (both even
    without a section), a ``pyproject.toml`` with ``[tool.pytest]`` or ``[tool.pytest.ini_options]``, a
    ``tox.ini`` with ``[pytest]`` or a ``setup.cfg`` with ``[tool:pytest]``, else the first ``pyproject.toml``
    seen; the rootdir is that file's folder; without one, the first folder upwards with a ``setup.py``, else the
    common folder of the invocation folder and the paths. ConfigError for a file pytest would refuse."""
    invocation_dir = Path(os.path.abspath(invocation_dir))
    dirs = []
    for arg in args:
        text = str(arg)
        if text.startswith("-"):
            continue
        path = Path(os.path.abspath(invocation_dir / text.partition("::")[0]))
        if path.exists():
            dirs.append(path if path.is_dir() else path.parent)
    ancestor = _common_ancestor(invocation_dir, dirs)
    found = _locate([ancestor])
    if found is not None:
        return found
    setup_py = next((folder for folder in (ancestor, *ancestor.parents) if (folder / "setup.py").is_file()), None)
    if setup_py is not None:
        return IniFile(None, setup_py, {})
    if dirs != [ancestor]:
        found = _locate(dirs or [invocation_dir])
        if found is not None:
            return found
    rootdir = _common_ancestor(invocation_dir, [invocation_dir, ancestor])
    return IniFile(None, ancestor if rootdir == Path(rootdir.anchor) else rootdir, {})
