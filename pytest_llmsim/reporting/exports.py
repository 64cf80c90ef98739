"""Result exports: JSON, CSV and NDJSON, chosen by the file's extension, each written atomically.

* ``.json``: one document ``{"run_id", "generated_at", "interrupted", "complete", "summary": {...},
  "results": [...], "total_results"}``.
* ``.ndjson`` / ``.jsonl``: one record per line (transcripts included), so the file streams into pandas, jq or
  a warehouse; the summary goes next to it in ``<name>.summary.json``.
* ``.csv``: one row per record with the flat fields of ``summary.RECORD_FIELDS`` (no transcript); summary
  in ``<name>.summary.json`` as for NDJSON.

Every record carries ``metrics``, each metric's result in the scenario's order (``{"name", "score", "passed",
"reason", "details"}``); the CSV's ``metrics`` column packs them as ``judge=3:passed;rules=0.5:failed;rouge=
0.41:info`` (name, score with up to 2 decimals, empty for none, and passed / failed / info).

With a baseline (``--llmsim-baseline``), every JSON/NDJSON record carries a ``baseline`` object (the scenario's
status, outcome and score in the baseline, its score, turns, tokens and cost deltas, ``transcript_changed``,
``regressed``, ``newly_failing``, ``newly_passing``: ``baseline.ScenarioDelta.to_dict``), null for a scenario not
in the baseline (and for every record of a run without one); the CSV gets the columns of ``BASELINE_CSV_FIELDS``
after the others, only when a baseline was given; the summary has a ``baseline`` block.

Other top-level objects come in as ``sections`` of the one write: with a judge calibration set
(``--llmsim-calibrate``), the JSON document (or the summary file of a CSV/NDJSON export) gets a ``calibration``
object (``calibration.CalibrationReport.to_dict``). Each export file is written once.

Every file is written to a temporary file in the target directory and renamed over the target, so a reader
never sees a half-written export. The temporary file is created with mode 0666 minus the umask, as
``open()`` creates junit.xml and report.html (``mkstemp`` would make every export 0600).

A run that did not finish (Ctrl-C, ``-x``) still writes its export, marked: the summary has
``"interrupted"`` and ``"unfinished_scenarios"``, and the JSON document repeats ``"interrupted"`` and
``"complete"`` at its top, so a partial export is never taken for a whole run.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.reporting.summary import RECORD_FIELDS
from pytest_llmsim.reporting.terminal import metrics_cell

if TYPE_CHECKING:
    from pytest_llmsim.reporting.baseline import Comparison

FORMATS = {".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv"}
# CSV columns added when a baseline was given: (column, key of the record's ``baseline`` object).
BASELINE_CSV_FIELDS = (("baseline_score", "score"), ("score_delta", "score_delta"), ("baseline_status", "status"),
                       ("transcript_changed", "transcript_changed"), ("regressed", "regressed"))


def export_format(path: Path) -> str:
    """The export format for ``path``'s extension; ValueError naming the supported ones otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported results file extension {path.suffix or '(none)'!r} in {path}; "
                         f"use one of {', '.join(FORMATS)}")
    return fmt


def summary_path_for(path: Path) -> Path:
    """Where the summary of a CSV/NDJSON export goes: ``results.ndjson`` -> ``results.summary.json``."""
    return path.with_name(f"{path.stem}.summary.json")


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path``, created with mode 0666 so the umask decides (unlike ``mkstemp``'s 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:  # name the folder that refused it, not the temporary file's made-up name
            raise type(exc)(exc.errno, exc.strerror, str(path.parent)) from None
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, [data])


def atomic_write_chunks(path: Path, chunks: Iterable[str]) -> None:
    """Write ``chunks`` (as UTF-8) to ``path`` as they come, so a 10 000-row export never exists as one string
    in memory; through a temporary file renamed into place, as ``atomic_write_bytes``."""
    _atomic_write(path, (chunk.encode("utf-8") for chunk in chunks))


def _prepare_target(path: Path) -> None:
    """Create ``path``'s folder; an OSError naming the offending path (not the temporary file's) when ``path`` is
    a folder or one of its parents is a file."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a parent is a file (or a dangling link): ``exist_ok`` does not cover it
        raise NotADirectoryError(errno.ENOTDIR, "a parent of it is a file, not a folder", exc.filename) from None


def _atomic_write(path: Path, blocks: Iterable[bytes]) -> None:
    """Write ``blocks`` to a temporary file beside ``path`` and rename it into place: a reader sees the old file
    or the whole new one."""
    _prepare_target(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            for block in blocks:
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_chunks(path, [text])


def _json(data: Any, *, indent: int | None = None) -> str:
    return json.dumps(data, ensure_ascii=False, indent=indent, allow_nan=False)


# A cell a spreadsheet would run as a formula (``=cmd|' /C calc'!A0``, ``+1+1``, ``-2+3``, ``@SUM(...)``; tab and
# carriage return too): OWASP's CSV-injection list. Scenario names, comments, reasons and error messages hold text
# from scenario files, CSVs of queries and the models, so any text cell may start with one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV cell: a text starting as a formula gets a leading ``'`` (a spreadsheet then shows it as
    text, the quote hidden); numbers (a score delta of -1) are written as they are. A text that already starts
    with quotes before a formula character gets one more, so ``csv_unescaped`` gives back every text exactly."""
    if isinstance(value, str) and value.lstrip("'").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_unescaped(cell: str) -> str:
    """The text ``csv_safe`` escaped, from its cell (reading an export back)."""
    if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return csv_safe(";".join(str(v) for v in value))
    return csv_safe(value)


def render_csv(records: Iterable[Mapping[str, Any]], *, baseline: bool = False) -> str:
    """CSV of export rows (``ScenarioRecord.to_dict()``); ``baseline`` adds the ``BASELINE_CSV_FIELDS`` columns
    from each row's ``baseline`` object (empty cells for a scenario not in the baseline)."""
    return "".join(csv_chunks(records, baseline=baseline))


def csv_chunks(records: Iterable[Mapping[str, Any]], *, baseline: bool = False) -> Iterator[str]:
    """``render_csv``, a header line and then a line per row as they are read."""
    extra = BASELINE_CSV_FIELDS if baseline else ()
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=[*RECORD_FIELDS, *(column for column, _ in extra)],
                            extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for record in records:
        row = {name: _csv_value(record.get(name)) for name in RECORD_FIELDS}
        row["metrics"] = csv_safe(metrics_cell(record.get("metrics")))
        old = record.get("baseline") or {}
        row.update({column: _csv_value(old.get(key)) for column, key in extra})
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def render_ndjson(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(ndjson_chunks(records))


def ndjson_chunks(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """``render_ndjson``, a line per row as they are read."""
    return (_json(record) + "\n" for record in records)


def _json_document_chunks(head: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """``_json({**head, "results": rows, "total_results": n}, indent=2) + "\n"``, a row at a time."""
    yield (_json(dict(head), indent=2)[:-2] + ",\n") if head else "{\n"  # the head without its closing "\n}"
    count = 0
    for row in rows:
        yield ('  "results": [\n' if count == 0 else ",\n") + "\n".join(
            "    " + line for line in _json(row, indent=2).split("\n"))
        count += 1
    yield ('\n  ],\n' if count else '  "results": [],\n') + f'  "total_results": {count}\n}}\n'


def summary_document(summary: Mapping[str, Any], *, run_id: str, generated_at: str) -> dict[str, Any]:
    return {"run_id": run_id, "generated_at": generated_at, **summary}


def export_rows(records: Iterable[ScenarioRecord], comparison: Comparison | None = None, *,
                baseline_field: bool = True) -> Iterator[dict[str, Any]]:
    """The export rows, one at a time: ``ScenarioRecord.to_dict()`` plus, with ``baseline_field`` or a
    ``comparison``, the ``baseline`` object (None without a baseline or for a scenario not in it)."""
    deltas = comparison.by_nodeid() if comparison is not None else {}
    for record in records:
        row = record.to_dict()
        if comparison is not None or baseline_field:
            delta = deltas.get(record.nodeid)
            row["baseline"] = delta.to_dict() if delta is not None else None
        yield row


def write_results(path: Path, records: Sequence[ScenarioRecord], summary: Mapping[str, Any], *,
                  run_id: str, generated_at: str, comparison: Comparison | None = None,
                  baseline_field: bool = False, sections: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``records`` and ``summary`` (``summary.summary_dict``) to ``path`` in the format its extension
    names; return the files written. ``comparison``: the run compared with its baseline, if any;
    ``baseline_field``: give every JSON/NDJSON record a ``baseline`` key even without a baseline (null), as the
    plugin does, so a run's records have the same keys with or without one. Plain rows otherwise. ``sections``:
    more top-level objects (e.g. ``calibration``) of the JSON document, or of the summary file beside a CSV/NDJSON
    export. Rows are made and written one at a time."""
    extra = dict(sections or {})
    clash = sorted(set(extra) & {"run_id", "generated_at", "interrupted", "complete", "summary", "results",
                                 "total_results", *summary})
    if clash:
        raise ValueError(f"export sections {clash} would overwrite the export's own keys")
    fmt = export_format(path)
    rows = export_rows(records, comparison, baseline_field=baseline_field)
    if fmt == "json":
        interrupted = bool(summary.get("interrupted"))
        complete = not interrupted and not summary.get("unfinished_scenarios")
        head = {"run_id": run_id, "generated_at": generated_at, "interrupted": interrupted,
                "complete": complete, "summary": dict(summary), **extra}
        atomic_write_chunks(path, _json_document_chunks(head, rows))
        return [path]
    if fmt == "csv":
        atomic_write_chunks(path, csv_chunks(rows, baseline=comparison is not None))
    else:
        atomic_write_chunks(path, ndjson_chunks(rows))
    side = summary_path_for(path)
    atomic_write_text(side, _json({**summary_document(summary, run_id=run_id, generated_at=generated_at), **extra},
                                  indent=2) + "\n")
    return [path, side]
