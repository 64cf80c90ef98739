"""``llmsim``: run scenario files without pytest, summarise exports, serve the API and talk to it.

One module a subcommand: ``run`` (``llmsim run FILE_OR_FOLDER``: a batch on the engine pytest uses), ``summarise``
(the summary of any export), ``merge`` (CI shards' exports as one run),
``history`` (``history``, ``compare``, ``view``: the run history), ``remote`` (``serve``, and
``status``/``fetch`` asking the service); ``common`` holds what they share (exit codes, ``UsageError``, the
settings, the common flags) and ``main`` the parser and the entry point (``llmsim = "pytest_llmsim.apps.cli:main"``).

Settings come from the option table pytest reads, through the one resolver pytest uses too (``config.resolve``):
the ini file ``pytest`` would find from the same paths and folder (pytest.ini, pyproject.toml, tox.ini or
setup.cfg, by pytest's rules), the environment variables the table names, and the flags here.

Adding a subcommand (say ``llmsim merge``):

1. a module ``apps/cli/merge.py`` with ``add_command(commands)``, which calls ``commands.add_parser("merge",
   help=...)``, adds its arguments (``add_common_arguments`` for ``--verbose``, ``-o`` and ``--base-url``; an
   argument that sets an option takes the option's ini key as ``dest``) and ends with
   ``set_defaults(handler=command_merge)``; and ``command_merge(args) -> int``, returning an exit code of
   ``common`` and raising ``common.UsageError`` for bad input (one line, exit 2). Settings, when it needs them:
   ``resolve_options([paths], flags_of(args))``. Import the engine inside the handler, so ``llmsim --help``
   stays fast and pytest-free;
2. its ``add_command`` in ``main.SUBCOMMANDS``;
3. a test in ``tests/e2e/test_cli.py`` and a row in ``docs/service.md``'s command table.
"""

from pytest_llmsim.apps.cli.common import UsageError, resolve_options
from pytest_llmsim.apps.cli.main import build_parser, main

__all__ = ["UsageError", "build_parser", "main", "resolve_options"]
