"""``llmsim summarise EXPORT``: the summary of any JSON, CSV or NDJSON export, with pytest's numbers."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_llmsim.apps.cli.common import FAILED_EXIT, OK, UsageError


def add_command(commands: Any) -> None:
    summarise = commands.add_parser("summarise", aliases=["summarize"], help="summarise a results export")
    summarise.add_argument("file")
    summarise.add_argument("--format", choices=("json", "csv"), default="json")
    summarise.add_argument("--output", metavar="FILE")
    summarise.add_argument("--histogram", metavar="PNG")
    summarise.add_argument("--quiet", action="store_true")
    summarise.set_defaults(handler=command_summarise)


def read_export(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON, CSV or NDJSON export of this project (``exports.py``)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such results file")
    try:
        with path.open(encoding="utf-8", newline="") as handle:  # a CSV cell's own line breaks kept as written
            text = handle.read()
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
            reader = csv.DictReader(io.StringIO(text, newline=""))
            missing = [name for name in _CSV_COLUMNS if name not in (reader.fieldnames or ())]
            if missing:
                first = text.splitlines()[0][:60] if text.strip() else "(empty file)"
                raise UsageError(f"{path}: not a pytest-llmsim CSV export: the header has no "
                                 f"{' and '.join(map(repr, missing))} column{'' if len(missing) == 1 else 's'} "
                                 f"(first line: {first!r})")
            from pytest_llmsim.reporting.exports import csv_unescaped

            rows = [_with_csv_usage({key: csv_unescaped(value) if isinstance(value, str) else value
                                     for key, value in row.items()}) for row in reader]
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
        writer = csv.DictWriter(buffer, fieldnames=list(flat), lineterminator="\r\n")
        writer.writeheader()
        from pytest_llmsim.reporting.exports import csv_safe

        writer.writerow({key: csv_safe(value) for key, value in flat.items()})
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

