"""``llmsim history``, ``llmsim compare`` and ``llmsim view``: the run history from the command line (no pytest).

* ``llmsim history [--path PATH]`` lists the runs (pytest runs and service batches) of a history store;
  ``llmsim history prune --keep N | --older-than D`` deletes old ones; ``llmsim history flaky [--last N]`` shows
  each scenario's pass rate over the last runs, its flips and since when it fails.
* ``llmsim compare RUN_A RUN_B`` compares two runs with statistics (``history.compare``): each run a JSON or
  NDJSON export, a recordings directory, or a run of the history (an id, a unique prefix, ``latest``,
  ``latest~N``). ``--fail-on-significant-regression[=ALPHA]``: exit 1 when B dropped significantly from A.
* ``llmsim view [PATH]`` serves the viewer (``apps/service/viewer.py``, on the service's stack; needs the service
  extra) on a history store, a service database or an export file (JSON, NDJSON, a recordings folder), read-only.

The history path: ``--path``/``--history``, else the ini's ``llmsim_history`` (as pytest reads it). Exit codes as
``llmsim``'s: 0, 1 (a significant regression with the gate), 2 usage error (one line).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import ConfigError, HistoryError
from pytest_llmsim.history.compare import (
    DEFAULT_ALPHA,
    RunComparison,
    compare_runs,
    flakiness,
    noisy_scenarios,
    significant_regressions,
)
from pytest_llmsim.history.store import HistoryStore, RunInfo
from pytest_llmsim.model.results import ScenarioRecord

OK, FAILED_EXIT, USAGE = 0, 1, 2
Resolve = Callable[[dict[str, str]], ResolvedOptions]  # the options, resolved as the ``llmsim`` command does
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def add_history_commands(commands: Any, resolve: Resolve) -> None:
    """Add ``history``, ``compare`` and ``view`` to the ``llmsim`` subcommands (``commands``: argparse's
    subparsers)."""

    def history_path() -> Path | None:
        value: Path | None = resolve({})["llmsim_history"]
        return value

    history = commands.add_parser("history", help="list, prune or check for flakiness the runs of a history store")
    history.add_argument("--path", metavar="PATH", help="the history (default: the ini's llmsim_history)")
    history.add_argument("--format", choices=("text", "json"), default="text")
    actions = history.add_subparsers(dest="action", required=False, parser_class=type(history))
    prune = actions.add_parser("prune", help="delete old runs")
    prune.add_argument("--keep", type=int, metavar="N", help="keep the newest N runs")
    prune.add_argument("--older-than", metavar="D", help="delete runs older than D (30d, 12h, 2w; a number: days)")
    flaky = actions.add_parser("flaky", help="each scenario's pass rate and flips over the last runs")
    flaky.add_argument("--last", type=int, default=20, metavar="N", help="the last N runs (default 20)")
    flaky.add_argument("--all", action="store_true", help="every scenario, not only the flaky or failing ones")
    history.set_defaults(handler=_guarded(lambda args: command_history(args, history_path)))

    compare = commands.add_parser("compare", help="compare two runs with statistics (exports, recordings or "
                                  "runs of the history)")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline: an export, a recordings folder or a run id")
    compare.add_argument("run_b", metavar="RUN_B", help="the candidate, likewise")
    compare.add_argument("--history", metavar="PATH", help="the history RUN_A/RUN_B ids refer to (default: the "
                         "ini's llmsim_history)")
    compare.add_argument("--alpha", type=float, default=None, help=f"significance level (default {DEFAULT_ALPHA})")
    compare.add_argument("--fail-on-significant-regression", nargs="?", const=DEFAULT_ALPHA, type=float,
                         default=None, metavar="ALPHA", help="exit 1 when RUN_B dropped significantly")
    compare.add_argument("--format", choices=("text", "json"), default="text")
    compare.add_argument("--all", action="store_true", help="list every scenario, not only those that changed")
    compare.set_defaults(handler=_guarded(lambda args: command_compare(args, history_path)))

    view = commands.add_parser("view", help="serve the history viewer (the service's app, /view)")
    view.add_argument("path", nargs="?", metavar="PATH", help="a history store, a service database or an export "
                      "(JSON, NDJSON, recordings folder; default: the ini's llmsim_history, else the service's "
                      "database)")
    view.add_argument("--port", type=int, help="port (default 5000)")
    view.set_defaults(handler=_guarded(lambda args: command_view(args, resolve, history_path)))


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A bad history, run or argument: one line on stderr and exit 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ConfigError as exc:
            print(f"llmsim: {exc}", file=sys.stderr)
            return USAGE
    return run


def _store(given: str | None, history_path: Callable[[], Path | None]) -> HistoryStore:
    path = Path(given) if given else history_path()
    if path is None:
        raise ConfigError("no history: give --path PATH (or --history PATH), or set llmsim_history in the ini file")
    return HistoryStore(path)


# -- history ------------------------------------------------------------------------------------------------------
def parse_age(text: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` or a number of days."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"--older-than {text!r}: give a duration such as 30d, 12h or 2w")
    return datetime.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def command_history(args: argparse.Namespace, history_path: Callable[[], Path | None]) -> int:
    store = _store(args.path, history_path)
    if args.action == "prune":
        if args.keep is None and args.older_than is None:
            raise ConfigError("history prune: give --keep N or --older-than D (or both)")
        if args.keep is not None and args.keep < 0:
            raise ConfigError(f"history prune: --keep {args.keep}: give 0 or more")
        age = parse_age(args.older_than) if args.older_than is not None else None
        deleted = store.prune(keep=args.keep, older_than=age)
        print(f"llmsim: {len(deleted)} run(s) deleted from {store.path}")
        return OK
    if args.action == "flaky":
        found = flakiness(store.run_verdicts(args.last), last=args.last)
        shown = found if args.all else [f for f in found if f.flips or f.failing_since is not None]
        if args.format == "json":
            print(json.dumps([f.to_dict() for f in shown], ensure_ascii=False, indent=2))
        else:
            for f in shown:
                print(f.text())
            if not shown:
                print(f"no scenario flipped or failed in the last {args.last} runs")
        return OK
    runs = store.runs()
    if args.format == "json":
        print(json.dumps([_run_dict(run) for run in runs], ensure_ascii=False, indent=2))
        return OK
    print(f"{'run':8}  {'created (UTC)':19}  {'status':11}  {'source':7}  {'scen.':>6}  {'pass':>6}  {'score':>5}  "
          f"{'cost $':>9}  commit")
    for run in runs:
        print(run_line(run))
    print(f"{len(runs)} run(s) in {store.path}")
    return OK


def _run_dict(run: RunInfo) -> dict[str, Any]:
    return {"run_id": run.run_id, "status": run.status, "source": run.source, "created_at": run.created_at,
            "completed_at": run.completed_at, "scenarios": run.scenarios, "git_commit": run.git_commit,
            "git_branch": run.git_branch, "git_clean": run.git_clean, "settings": run.settings,
            "pass_rate": run.figure("success_rate"), "mean_score": _mean_score(run),
            "cost_usd": run.figure("total_cost_usd")}


def _mean_score(run: RunInfo) -> float | None:
    stats = run.figure("score_statistics")
    return stats.get("mean") if isinstance(stats, dict) else None


def run_line(run: RunInfo) -> str:
    """One run of the listing: id, when, status, source, scenarios, pass rate, mean score, cost, git."""
    rate, score, cost = run.figure("success_rate"), _mean_score(run), run.figure("total_cost_usd")
    git = ""
    if run.git_commit:
        git = run.git_commit[:10] + (f" {run.git_branch}" if run.git_branch else "") + \
            ("" if run.git_clean is not False else " (uncommitted changes)")
    return (f"{run.run_id[:8]:8}  {run.created_at[:19].replace('T', ' '):19}  {run.status:11}  {run.source:7}  "
            f"{run.scenarios:>6}  {_figure(rate, '{:.1%}'):>6}  {_figure(score, '{:.2f}'):>5}  "
            f"{_figure(cost, '{:.6f}'):>9}  {git}")


def _figure(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, int | float) else "-"


# -- compare ------------------------------------------------------------------------------------------------------
def load_run(ref: str, store: HistoryStore | None) -> tuple[str, list[ScenarioRecord], RunInfo | None]:
    """A run's label, records and (from a history) its row: an export file, a recordings folder, or a run of
    ``store``."""
    path = Path(ref)
    if path.exists():
        from pytest_llmsim.llm.pricing import load_price_table
        from pytest_llmsim.reporting.baseline import load_baseline

        baseline = load_baseline(path, load_price_table(None))
        return ref, list(baseline.records.values()), None
    if store is None:
        raise ConfigError(f"{ref}: no such export or recordings folder, and no history to find a run {ref!r} in "
                          "(give --history PATH or set llmsim_history)")
    run = store.resolve(ref)
    return f"run {run.run_id[:8]} ({run.created_at[:19].replace('T', ' ')})", store.records(run.run_id), run


def same_agent(a: RunInfo | None, b: RunInfo | None) -> bool:
    """Both runs of one commit with clean trees and the same verdict settings: any difference is noise."""
    return (a is not None and b is not None and a.git_commit is not None and a.git_commit == b.git_commit
            and a.git_clean is True and b.git_clean is True and a.settings_key == b.settings_key)


def command_compare(args: argparse.Namespace, history_path: Callable[[], Path | None]) -> int:
    store: HistoryStore | None
    try:
        store = _store(args.history, history_path)
    except ConfigError:
        store = None
    label_a, records_a, run_a = load_run(args.run_a, store)
    label_b, records_b, run_b = load_run(args.run_b, store)
    noisy: set[str] = set()
    if store is not None and store.path.exists():
        try:
            noisy = noisy_scenarios(store.run_verdicts())
        except HistoryError:
            noisy = set()
    # ``is not None``, not ``or``: a level of 0 is refused below, never read as the default
    alpha = next(a for a in (args.fail_on_significant_regression, args.alpha, DEFAULT_ALPHA) if a is not None)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha {alpha:g}: give a level between 0 and 1, such as 0.05")
    comparison = compare_runs(records_a, records_b, alpha=alpha, noisy=noisy, same_agent=same_agent(run_a, run_b),
                              old_label=label_a, new_label=label_b)
    missed = significant_regressions(comparison)
    if args.format == "json":
        print(json.dumps({**comparison.to_dict(), "significant_regressions": missed}, ensure_ascii=False, indent=2))
    else:
        print("\n".join(_text(comparison, every=args.all)))
        for line in missed:
            print(f"significant regression: {line}")
    return FAILED_EXIT if missed and args.fail_on_significant_regression is not None else OK


def _text(comparison: RunComparison, *, every: bool) -> list[str]:
    lines = comparison.lines(every=every)
    if comparison.same_agent:
        lines.append("  both runs ran one commit with the same settings: every verdict flip is noise")
    return lines


SQLITE_HEADER = b"SQLite format 3\x00"
STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


EXPORT_SUFFIXES = (".json", ".ndjson", ".jsonl")


def is_store(path: Path) -> bool:
    """``path`` is (or is meant as) a SQLite history: it starts with SQLite's header, or is named like one, or is
    missing and not named like an export (so the message that it is missing names the right kind of file)."""
    if path.suffix.lower() in STORE_SUFFIXES:
        return True
    if not path.exists():
        return path.suffix.lower() not in EXPORT_SUFFIXES
    if path.is_dir():
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return True  # the store's own check says what is wrong with it


def export_history(path: Path, folder: Path) -> HistoryStore:
    """An export file (JSON, NDJSON) or a recordings folder as a history of one run, in ``folder``."""
    from pytest_llmsim.history.store import COMPLETED, INTERRUPTED, verdict_settings
    from pytest_llmsim.llm.pricing import load_price_table
    from pytest_llmsim.reporting.baseline import load_baseline
    from pytest_llmsim.reporting.summary import summarize

    try:
        baseline = load_baseline(path, load_price_table(None))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("llmsim_baseline ", "llmsim view ", 1)) from None
    records = list(baseline.records.values())
    started = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).isoformat(timespec="milliseconds")
    store = HistoryStore(folder / "export.sqlite", shown=f"{path} ({baseline.source})")
    run_id = next((r.run_id for r in records if r.run_id), "") or path.stem
    store.append_run(run_id=run_id, status=INTERRUPTED if baseline.partial else COMPLETED, records=records,
                     summary=summarize(records, interrupted=baseline.partial).to_dict(), started_at=started,
                     completed_at=started, settings=verdict_settings({}, records), source=baseline.source)
    return store


def command_view(args: argparse.Namespace, resolve: Resolve, history_path: Callable[[], Path | None]) -> int:
    """``llmsim view [PATH]``: the viewer (``/view``) on a history store, a service database or an export file,
    read-only. A store that cannot be read is one line and exit 2 before anything is served."""
    import tempfile

    try:
        from pytest_llmsim.apps.service.app import db_path, serve_viewer
    except ImportError as exc:
        raise ConfigError(f"llmsim view needs the service extra: pip install 'pytest-llmsim[service]' ({exc})") \
            from None
    flags = {"llmsim_port": str(args.port)} if args.port is not None else {}
    resolved = resolve(flags)
    path = Path(args.path) if args.path else history_path() or db_path(resolved)
    with tempfile.TemporaryDirectory(prefix="llmsim-view-") as folder:
        store = HistoryStore(path) if is_store(path) else export_history(path, Path(folder))
        runs = store.check()
        if store.read_only_disk():
            print(f"llmsim: {store.where} is on a read-only disk: shown as it is, read-only", file=sys.stderr)
        if runs == 0:
            print(f"llmsim: {store.where} holds no run yet; runs appear as they are stored", file=sys.stderr)
        return serve_viewer(store, str(resolved["llmsim_host"]), int(resolved["llmsim_port"]))


def add_command(commands: Any) -> None:
    """``history``, ``compare`` and ``view``, with settings resolved as ``pytest`` in this folder would."""
    from pytest_llmsim.apps.cli.common import resolve_options

    add_history_commands(commands, lambda flags: resolve_options([Path.cwd()], flags))
