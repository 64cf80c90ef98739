"""``llmsim``: run scenario files without pytest, summarise exports, serve the API and talk to it.

``llmsim run FILE`` runs a scenario file as a batch on the engine pytest uses (``batch.py``) and writes the
results (JSON, CSV, NDJSON) and the summary to the output directory; ``--single INDEX`` streams one conversation
turn by turn. ``llmsim summarise EXPORT`` prints the summary of any export. ``llmsim serve`` starts the REST API;
``status`` and ``fetch`` ask it about a batch.

Settings come from the option table pytest reads (``options.OPTIONS``): the ini file (pytest.ini, pyproject.toml,
tox.ini or setup.cfg, found from the scenario file's folder upwards, or the current one), the environment, and
the flags here. The reference's environment variables ``OPENAI_MODEL``, ``MAX_TURNS``, ``TIMEOUT_SEC`` and
``CONCURRENCY`` name ``llmsim_model``, ``llmsim_max_turns``, ``llmsim_timeout`` and ``llmsim_concurrency`` for this
command (``ENV_ALIASES``; pytest leaves them alone, such names are too common in shells).

Exit codes: 0 every scenario passed, 1 some failed or errored or a gate was missed, 2 usage error (bad input: one
line naming the file, scenario and field), 3 internal error.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import os
import sys
import threading
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmsim.config.options import OPTIONS, Option, ResolvedOptions, endpoint_configured, resolve_values
from pytest_llmsim.errors import ConfigError, ScenarioError
from pytest_llmsim.model.scenario_paths import under_llmsim_paths
from pytest_llmsim.model.settings import RecordMode, resolve_http_backend
from pytest_llmsim.reporting.summary import plural

OK, FAILED_EXIT, USAGE, INTERNAL = 0, 1, 2, 3
# The reference's environment variables: read by ``llmsim`` only (generic names such as PORT or HOST are often set
# in a shell for something else, and must not change or break a pytest run).
ENV_ALIASES = {"llmsim_model": "OPENAI_MODEL", "llmsim_max_turns": "MAX_TURNS", "llmsim_timeout": "TIMEOUT_SEC",
               "llmsim_concurrency": "CONCURRENCY", "llmsim_host": "HOST", "llmsim_port": "PORT",
               "llmsim_webhook_url": "WEBHOOK_URL"}
TOKEN_ENV = "LLMSIM_API_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:5000"


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


# -- settings ---------------------------------------------------------------------------------------------------
def front_end_rows() -> list[Option]:
    """The option table with the reference's environment variables on the rows they name."""
    return [dataclasses.replace(row, env=ENV_ALIASES[row.ini]) if row.ini in ENV_ALIASES and row.env is None else row
            for row in OPTIONS]


def find_ini(start: Path) -> tuple[dict[str, Any], Path | None]:
    """pytest's ini values from the first pytest.ini, pyproject.toml ([tool.pytest.ini_options]), tox.ini ([pytest])
    or setup.cfg ([tool:pytest]) in ``start`` or a parent; ``({}, None)`` when there is none."""
    import iniconfig

    for folder in (start, *start.parents):
        for name, section in (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None),
                              ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
            path = folder / name
            if not path.is_file():
                continue
            try:
                if section is None:
                    table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("pytest", {})
                    if "ini_options" in table:
                        return dict(table["ini_options"]), path
                    continue
                ini = iniconfig.IniConfig(str(path))
            except (OSError, ValueError, iniconfig.ParseError) as exc:
                raise UsageError(f"{path}: cannot read the ini file: {exc}") from None
            if section in ini:
                return dict(ini[section].items()), path
            if name == "pytest.ini":
                return {}, path
    return {}, None


def resolve_options(start: Path, flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ResolvedOptions:
    """Every option's value for this command: ``flags`` (ini key -> value), the environment, the ini file."""
    env = os.environ if env is None else env
    ini, ini_path = find_ini(start.resolve())
    rows = front_end_rows()
    lines = {row.ini for row in rows if row.kind == "lines"}
    ini = {key: (value.splitlines() if key in lines and isinstance(value, str) else value)
           for key, value in ini.items()}
    cwd = Path.cwd()
    try:
        resolved = resolve_values(rows, cli=flags, env=env, ini=ini, invocation_dir=cwd,
                                  ini_dir=ini_path.parent if ini_path is not None else cwd,
                                  local=lambda values: not endpoint_configured(values, env))
        _check_base_url(resolved)
        resolve_http_backend(resolved["llmsim_http_backend"], resolved["llmsim_base_url"] or None)
        if resolved["llmsim_agent"]:
            from pytest_llmsim.agents.specs import parse_agent_spec

            parse_agent_spec(resolved["llmsim_agent"])
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return resolved


def _check_base_url(resolved: ResolvedOptions) -> None:
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
        where = "--base-url (llmsim_base_url)" if source == "command line" \
            else source[4:] if source.startswith("env ") else "llmsim_base_url"
        raise UsageError(f"{where}: {str(value)[:80]!r} is not an http:// or https:// URL with a host; give the "
                         "endpoint's base URL, e.g. http://127.0.0.1:8000/v1")


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


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = _set_values(getattr(args, "set", None) or [])
    for name, key in (("base_url", "llmsim_base_url"), ("concurrency", "llmsim_concurrency"),
                      ("record", "llmsim_record_mode"), ("output_dir", "llmsim_output_dir"),
                      ("host", "llmsim_host"), ("port", "llmsim_port"), ("db", "llmsim_service_db")):
        value = getattr(args, name, None)
        if value is not None:
            flags[key] = str(value)
    return flags


def _log_dir(resolved: ResolvedOptions) -> Path | None:
    value: Path | None = resolved["llmsim_log_dir"]
    return value


# -- run ----------------------------------------------------------------------------------------------------------
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
    resolved = resolve_options(path if folder else path.parent, _flags(args))
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
    setup_logs(_log_dir(resolved), verbose=args.verbose, scrub=batch.secret_scrubber(resolved))
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


# -- summarise ---------------------------------------------------------------------------------------------------
def read_export(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON, CSV or NDJSON export of this project (``exports.py``)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such results file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the results ({exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            document = json.loads(text)
            rows = document.get("results") if isinstance(document, dict) else None
            if not isinstance(rows, list):
                raise UsageError(f'{path}: not a pytest-llmsim JSON export (no "results" list)')
        elif suffix in (".ndjson", ".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            missing = [name for name in _CSV_COLUMNS if name not in (reader.fieldnames or ())]
            if missing:
                first = text.splitlines()[0][:60] if text.strip() else "(empty file)"
                raise UsageError(f"{path}: not a pytest-llmsim CSV export: the header has no "
                                 f"{' and '.join(map(repr, missing))} column{'' if len(missing) == 1 else 's'} "
                                 f"(first line: {first!r})")
            rows = [_with_csv_usage(row) for row in reader]
        else:
            raise UsageError(f"{path}: unsupported extension {suffix or '(none)'!r}; use .json, .csv or .ndjson")
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict) or "scenario" not in row
                or "status" not in row), None)
    if bad is not None:
        raise UsageError(f"{path}: record #{bad} is not a pytest-llmsim result (an object with 'scenario' and "
                         "'status'); give a JSON, CSV or NDJSON export of llmsim run or --llmsim-results")
    if not rows:
        raise UsageError(f"{path}: holds no results (0 records{', an empty file' if not text.strip() else ''}); "
                         "nothing to summarise: give an export of a run that ran scenarios")
    return rows


_CSV_COLUMNS = ("scenario", "status")  # columns every CSV export has (summary.RECORD_FIELDS)


def _number(row: Mapping[str, Any], name: str) -> int:
    try:
        return int(float(row.get(name) or 0))
    except ValueError:
        return 0


def _with_csv_usage(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row with one usage entry rebuilt from its token and call columns (CSV has no per-model usage), so
    the summary's token and call totals are those of the JSON export."""
    live, replayed = _number(row, "live_tokens"), _number(row, "replayed_tokens")
    prompt, completion = _number(row, "prompt_tokens"), _number(row, "completion_tokens")
    live_prompt = min(live, prompt)
    usage = {"role": "all", "model": "(csv export)", "live_calls": _number(row, "live_calls"),
             "cached_calls": _number(row, "cached_calls"), "prompt_tokens": live_prompt,
             "completion_tokens": live - live_prompt, "cached_prompt_tokens": prompt - live_prompt,
             "cached_completion_tokens": max(0, completion - (live - live_prompt), replayed - (prompt - live_prompt))}
    return {**row, "usage": [usage]}


def flat_summary(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The summary as one CSV row: nested objects as ``score_statistics.mean``, lists ``;``-joined."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flat_summary(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            flat[f"{prefix}{key}"] = ";".join(str(v) for v in value)
        else:
            flat[f"{prefix}{key}"] = "" if value is None else value
    return flat


def command_summarise(args: argparse.Namespace) -> int:
    from pytest_llmsim.model.results import ScenarioRecord
    from pytest_llmsim.reporting.summary import summarize
    from pytest_llmsim.reporting.terminal import totals_lines

    path = Path(args.file)
    rows = read_export(path)
    try:
        records = [ScenarioRecord.from_dict(row) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path}: a record cannot be read: {exc}") from None
    summary = summarize(records)
    data = summary.to_dict()
    if args.format == "csv":
        buffer = io.StringIO()
        flat = flat_summary(data)
        writer = csv.DictWriter(buffer, fieldnames=list(flat), lineterminator="\n")
        writer.writeheader()
        writer.writerow(flat)
        text = buffer.getvalue()
    else:
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if args.output:
        from pytest_llmsim.reporting.exports import atomic_write_text

        atomic_write_text(Path(args.output), text)
    if args.histogram:
        from pytest_llmsim.reporting.histogram import HistogramUnavailable, draw_histogram

        try:
            draw_histogram(summary, Path(args.histogram))
        except HistogramUnavailable as exc:
            raise UsageError(f"--histogram: {exc}") from None
    if not args.quiet:
        if args.output:
            print("\n".join(totals_lines(summary)))
        else:
            sys.stdout.write(text)
    return OK if summary.failed_scenarios + summary.errored_scenarios == 0 else FAILED_EXIT


# -- serve, status, fetch ---------------------------------------------------------------------------------------
def command_serve(args: argparse.Namespace) -> int:
    try:
        from pytest_llmsim.apps.service.app import serve
    except ImportError as exc:
        raise UsageError(f"llmsim serve needs the service extra: pip install 'pytest-llmsim[service]' ({exc})") \
            from None
    resolved = resolve_options(Path.cwd(), _flags(args))
    return serve(resolved, verbose=args.verbose)


def _api(args: argparse.Namespace, path: str, **params: str) -> Any:
    import httpx

    url = (args.api_url or os.environ.get("LLMSIM_API_URL") or DEFAULT_API_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"} if os.environ.get(TOKEN_ENV) else {}
    try:
        response = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{url}: cannot reach the service ({exc})") from None
    if response.status_code == 404:
        raise UsageError(f"batch {args.batch_id}: not found at {url}")
    if response.status_code in (401, 403):
        raise UsageError(f"{url}: not authorised; set {TOKEN_ENV} to the server's token")
    if response.status_code >= 400:
        raise ConnectionError(f"{url}{path}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def command_status(args: argparse.Namespace) -> int:
    """The batch's status as JSON; exit 1 when it completed but is not ``ok`` (a scenario failed or errored)."""
    data = _api(args, f"/api/batches/{args.batch_id}").json()
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return FAILED_EXIT if data.get("ok") is False else OK


def command_fetch(args: argparse.Namespace) -> int:
    response = _api(args, f"/api/batches/{args.batch_id}/results", format=args.format)
    if args.output:
        from pytest_llmsim.reporting.exports import atomic_write_bytes

        atomic_write_bytes(Path(args.output), response.content)
    else:
        sys.stdout.write(response.text)
    return OK


# -- entry point ----------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: exit 2, one line
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmsim", description="Simulate and judge conversations with an LLM agent: run scenario "
                     "files, summarise results, serve the REST API.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--verbose", action="store_true", help="show the logs live on stderr")
        sub.add_argument("-o", "--set", action="append", metavar="KEY=VALUE",
                         help="set any llmsim ini key (e.g. -o llmsim_prompts_dir=prompts)")
        sub.add_argument("--base-url", help="OpenAI-compatible endpoint (env OPENAI_BASE_URL)")

    run = commands.add_parser("run", help="run a scenario file, or every scenario file in a folder")
    run.add_argument("file", metavar="FILE_OR_FOLDER")
    run.add_argument("--single", type=int, metavar="INDEX", help="run only the scenario at INDEX, streaming it")
    run.add_argument("--no-stream", action="store_true", help="with --single: print only the verdict")
    run.add_argument("--output-dir", metavar="DIR", help="directory of the results (default: results)")
    run.add_argument("--concurrency", type=int, metavar="N", help="conversations at once (env CONCURRENCY)")
    run.add_argument("--record", choices=tuple(m.value for m in RecordMode), help="record mode of cache/recordings")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    common(run)
    run.set_defaults(handler=command_run)

    summarise = commands.add_parser("summarise", aliases=["summarize"], help="summarise a results export")
    summarise.add_argument("file")
    summarise.add_argument("--format", choices=("json", "csv"), default="json")
    summarise.add_argument("--output", metavar="FILE")
    summarise.add_argument("--histogram", metavar="PNG")
    summarise.add_argument("--quiet", action="store_true")
    summarise.set_defaults(handler=command_summarise)

    serve = commands.add_parser("serve", help="start the REST API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; env HOST)")
    serve.add_argument("--port", type=int, help="port (default 5000; env PORT)")
    serve.add_argument("--db", metavar="PATH", help="SQLite database (default: results/llmsim.sqlite3)")
    serve.add_argument("--output-dir", metavar="DIR")
    serve.add_argument("--concurrency", type=int, metavar="N")
    serve.add_argument("--record", choices=tuple(m.value for m in RecordMode))
    common(serve)
    serve.set_defaults(handler=command_serve)

    for name, text in (("status", "a batch's status"), ("fetch", "a batch's results")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("batch_id")
        sub.add_argument("--api-url", metavar="URL", help=f"the service (default {DEFAULT_API_URL})")
        if name == "fetch":
            sub.add_argument("--format", choices=("json", "csv", "ndjson"), default="json")
            sub.add_argument("--output", metavar="FILE")
        sub.set_defaults(handler=command_status if name == "status" else command_fetch)

    from pytest_llmsim.apps.history_cli import add_history_commands  # history, compare

    add_history_commands(commands, lambda flags: resolve_options(Path.cwd(), flags))
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


if __name__ == "__main__":
    sys.exit(main())
