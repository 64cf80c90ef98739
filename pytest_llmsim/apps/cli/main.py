"""``llmsim``'s parser and entry point: the subcommands, each added by its own module, and one exit code per run.

Exit codes: 0 every scenario passed, 1 some failed or errored or a gate was missed, 2 usage error (bad input: one
line naming the file, scenario and field), 3 internal error or the service unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pytest_llmsim.apps.cli.common import FAILED_EXIT, INTERNAL, USAGE, Parser, UsageError
from pytest_llmsim.apps.cli.history import add_command as add_history
from pytest_llmsim.apps.cli.merge import add_command as add_merge
from pytest_llmsim.apps.cli.remote import add_serve, add_status_and_fetch
from pytest_llmsim.apps.cli.run import add_command as add_run
from pytest_llmsim.apps.cli.summarise import add_command as add_summarise

# The subcommands, in the order ``llmsim --help`` lists them. Each adds its parser to the subparsers it is given and
# sets ``handler`` (a function of the parsed arguments that returns the exit code, and raises ``UsageError`` for bad
# input). A new subcommand: a module beside this one with such a function, and its entry here.
SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_run, add_summarise, add_merge, add_history,
                                                  add_serve, add_status_and_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llmsim", description="Simulate and judge conversations with an LLM agent: run scenario "
                    "files, summarise results, serve the REST API.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"llmsim: {exc}", file=sys.stderr)
        return USAGE
    except ConnectionError as exc:
        print(f"llmsim: {exc}", file=sys.stderr)
        return INTERNAL
    except KeyboardInterrupt:
        print("llmsim: interrupted", file=sys.stderr)
        return FAILED_EXIT
    except Exception as exc:  # a bug of ours: one line and exit 3 (the traceback with --verbose)
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        print(f"llmsim: internal error {type(exc).__name__}: {exc}", file=sys.stderr)
        return INTERNAL
    finally:
        sys.stdout.flush()
