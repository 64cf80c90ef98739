"""``llmsim run FILE_OR_FOLDER``: run a scenario file (or every scenario file pytest would collect in a folder) as
a batch on the engine pytest uses (``apps.batch``), and write the results (JSON, CSV, NDJSON) and the summary to the
output directory; ``--single INDEX`` streams one conversation turn by turn."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmsim.apps.cli.common import USAGE, UsageError, add_common_arguments, flags_of, resolve_options
from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import ConfigError, ScenarioError
from pytest_llmsim.model.scenario_paths import under_llmsim_paths
from pytest_llmsim.model.settings import RecordMode
from pytest_llmsim.reporting.summary import plural


def add_command(commands: Any) -> None:
    run = commands.add_parser("run", help="run a scenario file, or every scenario file in a folder")
    run.add_argument("file", metavar="FILE_OR_FOLDER")
    run.add_argument("--single", type=int, metavar="INDEX", help="run only the scenario at INDEX, streaming it")
    run.add_argument("--no-stream", action="store_true", help="with --single: print only the verdict")
    run.add_argument("--output-dir", dest="llmsim_output_dir", metavar="DIR",
                     help="directory of the results (default: results)")
    run.add_argument("--concurrency", dest="llmsim_concurrency", type=int, metavar="N",
                     help="conversations at once (env CONCURRENCY)")
    run.add_argument("--record", dest="llmsim_record_mode", choices=tuple(m.value for m in RecordMode),
                     help="record mode of cache/recordings")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_common_arguments(run)
    run.set_defaults(handler=command_run)


def command_run(args: argparse.Namespace) -> int:
    from pytest_llmsim.apps import batch
    from pytest_llmsim.apps.service.logs import log_record, setup_logs
    from pytest_llmsim.llm.pricing import load_price_table
    from pytest_llmsim.reporting.exports import write_results
    from pytest_llmsim.reporting.summary import missed_gates, summarize, summary_dict
    from pytest_llmsim.reporting.terminal import backend_messages, summary_lines

    path = Path(args.file)
    if not path.exists():
        raise UsageError(f"{path}: no such scenario file or folder")
    folder = path.is_dir()
    if not folder and not path.is_file():
        raise UsageError(f"{path}: not a scenario file or folder")
    resolved = resolve_options([path], flags_of(args))  # the ini file `pytest PATH` would read
    rootdir = resolved.ini_dir
    try:
        items = _folder_items(path, resolved) if folder else batch.items_from_file(path, rootdir)
        prices = load_price_table(resolved["llmsim_prices"])
    except (ScenarioError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if args.single is not None:
        if not 0 <= args.single < len(items):
            what = "folder" if folder else "file"
            raise UsageError(f"{path}: --single {args.single}: the {what} has {plural(len(items), 'scenario')} (0 to "
                             f"{len(items) - 1})")
        items = [items[args.single]]
    for item in items:
        if item.problem is not None:
            print(f"llmsim: {item.problem}", file=sys.stderr)
    setup_logs(resolved["llmsim_log_dir"], verbose=args.verbose, scrub=batch.secret_scrubber(resolved))
    settings = batch.engine_settings(resolved, rootdir, log=lambda line: print(line, file=sys.stderr))
    run_id = str(uuid.uuid4())
    records: dict[int, Any] = {}
    progress = _Progress(len(items), enabled=args.single is None and sys.stdout.isatty() and not args.quiet)
    stream = args.single is not None and not args.no_stream

    def on_result(item: batch.BatchItem, record: Any) -> None:
        records[item.index] = record
        log_record(run_id, record)
        progress.advance(record)

    runner = batch.BatchRunner(settings, rpm=resolved["llmsim_rpm"])
    try:
        with progress:
            batch.run_batch(runner, items, prices=prices, run_id=run_id, on_result=on_result,
                            on_turn=_print_turn if stream else None)
    finally:
        runner.close()
        batch.stop_local_model()
    ordered = [records[index] for index in sorted(records)]
    summary = summarize(ordered)
    gates = batch.gates_of(resolved)
    missed = missed_gates(summary, gates)
    if args.single is not None:
        _print_verdict(ordered[0])
    output_dir: Path = resolved["llmsim_output_dir"]
    stamp = datetime.datetime.now(datetime.UTC)
    stem = f"batch_{run_id[:8]}_{stamp.strftime('%Y%m%d_%H%M%S')}"
    document = summary_dict(summary, gates, missed)
    written = []
    try:
        for suffix in (".json", ".csv", ".ndjson"):
            written += write_results(output_dir / f"{stem}{suffix}", ordered, document, run_id=run_id,
                                     generated_at=stamp.isoformat(timespec="seconds"), baseline_field=True)
    except OSError as exc:
        raise UsageError(f"{output_dir}: cannot write the results ({exc.strerror or exc})") from None
    backend = backend_messages(ordered)
    if not args.quiet:
        verbosity = -1 if args.single is not None else 0
        for line in summary_lines(ordered, summary, gates=gates, missed=missed, verbosity=verbosity,
                                  backend=backend):
            print(f"==== {line.text} ====" if line.markup.get("separator") else line.text)
        print(f"llmsim: results in {', '.join(str(p) for p in dict.fromkeys(written))}")
    if backend:
        return USAGE
    return batch.exit_status(ordered, missed)


_INVALID_FILE_ITEM = "invalid-file"  # the item pytest reports for an unusable file (items.INVALID_FILE_ITEM)
# pytest's default ``norecursedirs``: folders a collection never enters.
_SKIPPED_DIRS = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}", "__pycache__")


def _under(rel: str, patterns: Sequence[str]) -> bool:
    """``rel`` (relative to the rootdir) matches one of ``patterns`` as ``llmsim_paths`` entries match."""
    return under_llmsim_paths(rel, patterns)


def scenario_files(folder: Path, resolved: ResolvedOptions) -> list[Path]:
    """The scenario files pytest collects under ``folder`` (``pytest folder/``): its .json/.yaml/.yml files within
    ``llmsim_paths`` and outside ``llmsim_transcripts``, in pytest's order (sorted, files before subfolders).
    UsageError when there is none, saying why."""
    import fnmatch

    from pytest_llmsim.model.scenario_paths import SCENARIO_SUFFIXES

    rootdir = resolved.ini_dir.resolve()
    found: list[Path] = []
    seen: list[Path] = []

    def walk(directory: Path) -> None:
        entries = sorted(directory.iterdir())
        for entry in entries:
            if entry.is_file() and entry.suffix in SCENARIO_SUFFIXES:
                seen.append(entry)
                try:
                    rel = entry.resolve().relative_to(rootdir).as_posix()
                except ValueError:
                    continue
                if _under(rel, resolved["llmsim_paths"]) and not _under(rel, resolved["llmsim_transcripts"]):
                    found.append(entry)
        for entry in entries:
            if entry.is_dir() and not any(fnmatch.fnmatch(entry.name, skip) for skip in _SKIPPED_DIRS):
                walk(entry)

    try:
        walk(folder)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot read the folder ({exc.strerror or exc})") from None
    if not found:
        configured = ", ".join(p.strip() for p in resolved["llmsim_paths"] if p.strip()) or "(none)"
        if seen:
            raise UsageError(f"{folder}: {plural(len(seen), 'scenario-like file')} but none within llmsim_paths "
                             f"({configured}, relative to {rootdir}), so pytest would not collect them either; name a "
                             "file, or add the folder to llmsim_paths (-o llmsim_paths=FOLDER)")
        raise UsageError(f"{folder}: no scenario files (.json, .yaml or .yml) in the folder")
    return found


def _folder_items(folder: Path, resolved: ResolvedOptions) -> list[Any]:
    """The slots of every scenario file under ``folder``, numbered across files; a file that cannot be used as a
    whole is one slot with its problem (an error in the results), and the other files still run."""
    from pytest_llmsim.apps import batch

    items: list[batch.BatchItem] = []
    for path in scenario_files(folder, resolved):
        try:
            found = batch.items_from_file(path, resolved.ini_dir)
        except ScenarioError as exc:
            try:
                shown = path.resolve().relative_to(resolved.ini_dir.resolve()).as_posix()
            except ValueError:
                shown = path.as_posix()
            found = [batch.BatchItem(0, _INVALID_FILE_ITEM, f"{shown}::{_INVALID_FILE_ITEM}", str(path), None,
                                     str(exc))]
        items += [dataclasses.replace(item, index=len(items) + i) for i, item in enumerate(found)]
    return items


def _print_turn(turn: Any) -> None:
    """One turn as it happens (called on the engine's thread; one write per line)."""
    if getattr(turn, "messages", None) or getattr(turn, "handoffs", None):  # a multi-agent turn: a line per speaker
        from pytest_llmsim.model.results import spoken_lines

        sys.stdout.write("".join(f"{who}: {text}\n" for who, text in spoken_lines(vars(turn))))
        sys.stdout.flush()
        return
    who = "Customer" if turn.role == "client" else "Agent"
    calls = "".join(f" [tool {call.get('name')}]" for call in turn.tool_calls)
    sys.stdout.write(f"{who}:{calls} {turn.text}\n")
    sys.stdout.flush()


def _print_verdict(record: Any) -> None:
    from pytest_llmsim.reporting.terminal import metric_lines

    result = record.result
    if result.error_message:
        print(f"verdict: error ({result.error_kind}): {result.error_message.splitlines()[0]}")
    else:
        score = f"score {result.score}/3 (minimum {result.min_score})" if result.score is not None else "no score"
        print(f"verdict: {record.outcome} - {score}" + (f": {result.comment}" if result.comment else ""))
    for line in metric_lines(result):
        print(f"  {line}")
    sys.stdout.flush()


class _Progress:
    """done/total, pass rate so far, spent cost and ETA with rich, only on a terminal."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.outcomes: dict[str, int] = {}
        self.cost = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("llmsim"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("pass {task.fields[rate]}"), TextColumn("${task.fields[cost]}"),
                                 TextColumn("ETA"), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task("batch", total=self.total, rate="n/a", cost="0.000000")
        return self

    def advance(self, record: Any) -> None:
        from pytest_llmsim.apps.batch import passed_share

        with self._lock:
            self.outcomes[str(record.outcome)] = self.outcomes.get(str(record.outcome), 0) + 1
            self.cost += record.cost_usd
            if self._bar is not None:
                rate = passed_share(self.outcomes)
                self._bar.update(self._task, advance=1, rate="n/a" if rate is None else f"{rate:.1%}",
                                 cost=f"{self.cost:.6f}")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

