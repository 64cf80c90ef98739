"""A CSV of initial queries with follow-ups, as scenarios (the evaluation module's ``load_initial_queries``).

A scenario file names the CSV under a top-level ``queries`` field, beside (or instead of) ``scenarios``::

    defaults: {agent: {python: "bots.clinic:group_chat"}, customer: proceed, max_turns: 8}
    queries:
      csv: queries.csv                 # relative to the scenario file
      id: Patient ID                   # the column naming each conversation (default: id)
      query: Initial Query             # the customer's opening message (default: query)
      followups: Possible Follow up    # a column or a list of columns, optional
      delimiter: ","                   # optional

Each row is one conversation: the customer opens with the query, then asks each follow-up in order (a scripted
customer), or with ``customer: proceed`` (in ``defaults``) answers "proceed" once they are asked. Rows in a row
with the same id and query are one conversation with their follow-ups in order (the evaluation module's CSV has
one follow-up per row). A later row with an id already used gets ``<id>#2``, ``<id>#3``, ...

The file is read as a stream (``iter_query_rows``: one row at a time, never the whole text), so a CSV of 100 000
rows costs the scenarios it makes and no more. Every bad row is a ``RowProblem`` naming the file, the line and the
column (a missing cell, an empty query or id, bytes that are not UTF-8, a row with more cells than the header);
the other rows still run.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pytest_llmsim.safe_files import UnreadableFile, open_regular

MAX_CSV_ROWS = 1_000_000
"""Most rows read from one CSV of queries."""
MAX_CELL_CHARS = 1_000_000
"""Longest cell of a CSV of queries (the csv module's own limit is raised to this)."""
MAX_LINE_CHARS = 4 * MAX_CELL_CHARS
"""Longest line of a CSV of queries: a longer one is skipped (read in bounded pieces) and named as a problem."""
MAX_SHOWN_COLUMNS = 20
"""Header cells a missing-column problem shows (each at most SHOWN_NAME_CHARS characters)."""
SHOWN_NAME_CHARS = 40
DEFAULT_COLUMNS = {"id": "id", "query": "query"}
_OPTIONS = ("csv", "id", "query", "followups", "delimiter")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, read with surrogateescape


@dataclass(frozen=True)
class QueriesSpec:
    """The ``queries`` field: the CSV and its columns."""

    csv: Path
    id: str
    query: str
    followups: tuple[str, ...]
    delimiter: str

    @classmethod
    def parse(cls, data: Any, base_dir: Path) -> QueriesSpec:
        """The spec from the scenario file's ``queries`` value; ValueError naming the field otherwise."""
        if isinstance(data, str):
            data = {"csv": data}
        if not isinstance(data, Mapping):
            raise ValueError("must be a CSV path or an object {csv: PATH, id: COLUMN, query: COLUMN, followups: "
                             f"COLUMN or [COLUMNS]}} (got {type(data).__name__})")
        unknown = sorted(set(data) - set(_OPTIONS), key=str)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; it takes {', '.join(_OPTIONS)}")
        path = data.get("csv")
        if not isinstance(path, str) or not path.strip():
            raise ValueError("'csv' must name the CSV file (relative to the scenario file)")
        columns = {}
        for key in ("id", "query"):
            value = data.get(key, DEFAULT_COLUMNS[key])
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key!r} must be a column name (got {value!r})")
            columns[key] = value
        followups = data.get("followups", ())
        if isinstance(followups, str):
            followups = (followups,)
        if not isinstance(followups, list | tuple) or not all(isinstance(c, str) and c.strip() for c in followups):
            raise ValueError(f"'followups' must be a column name or a list of them (got {followups!r})")
        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
            raise ValueError(f"'delimiter' must be one character other than a quote or a line break (got "
                             f"{delimiter!r})")
        return cls(base_dir / path, columns["id"], columns["query"], tuple(followups), delimiter)


@dataclass(frozen=True)
class QueryRow:
    """One conversation of the CSV: its id, opening query and follow-ups; ``line`` where its first row starts."""

    line: int
    id: str
    query: str
    followups: tuple[str, ...]


@dataclass(frozen=True)
class RowProblem:
    """A row that cannot be a conversation (or the whole file, ``line`` 1 for its header): the message names the
    file, the line and the column."""

    line: int
    message: str


def _short(name: str) -> str:
    """A header cell as a problem shows it: at most SHOWN_NAME_CHARS characters (a file that is no CSV of queries
    must not be copied into the reports through its first line)."""
    return name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "..."


def _bad_bytes(text: str) -> str:
    """The bytes a surrogate-escaped text stands for that are not UTF-8, as ``0xff 0xfe``."""
    return " ".join(f"0x{ord(ch) - 0xDC00:02x}" for ch in _SURROGATE_RE.findall(text)[:4])


def iter_query_rows(spec: QueriesSpec) -> Iterator[QueryRow | RowProblem]:
    """The CSV's conversations and bad rows, in file order, read one row at a time."""
    where = spec.csv
    try:
        # a regular file only: a link to /dev/zero or a FIFO would never end (or never start)
        fd = open_regular(spec.csv)
    except (OSError, UnreadableFile) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        yield RowProblem(0, f"{where}: cannot read the CSV of queries: {problem}")
        return
    # surrogateescape: a byte that is not UTF-8 spoils its row only (found per cell below), not the file
    with os.fdopen(fd, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        old_limit = csv.field_size_limit(MAX_CELL_CHARS)
        try:
            lines = _BoundedLines(handle, MAX_LINE_CHARS)
            yield from _rows(csv.reader(lines, delimiter=spec.delimiter), lines, spec)
        finally:
            csv.field_size_limit(old_limit)


class _LineTooLong(Exception):
    """A line of the CSV longer than MAX_LINE_CHARS (skipped)."""


class _BoundedLines:
    """The lines of ``handle``, each read at most ``limit`` characters at a time: a longer line is read to its end
    in pieces, dropped, and raises ``_LineTooLong`` (the next line follows on the next call). ``count``: the lines
    read so far (the csv reader's ``line_num`` does not count a dropped line)."""

    def __init__(self, handle: TextIO, limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.count = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.handle.readline(self.limit)
        if not line:
            raise StopIteration
        self.count += 1
        if len(line) == self.limit and not line.endswith(("\n", "\r")):
            while line and not line.endswith(("\n", "\r")):
                line = self.handle.readline(1 << 20)
            raise _LineTooLong(f"the line is longer than {self.limit:,} characters (a cell holds at most "
                               f"{MAX_CELL_CHARS:,}); it was skipped")
        return line


def _rows(reader: Any, lines: _BoundedLines,  # Any: csv's reader type is private
          spec: QueriesSpec) -> Iterator[QueryRow | RowProblem]:
    where = spec.csv
    try:
        header = next(reader, None)
    except (csv.Error, _LineTooLong) as exc:
        yield RowProblem(1, f"{where}:1: the header cannot be read as CSV: {exc}")
        return
    if header is None:
        yield RowProblem(1, f"{where}: the CSV of queries is empty; its first line must name the columns "
                            f"({spec.id!r}, {spec.query!r}, ...)")
        return
    header = [name.strip() for name in header]
    if any("\x00" in name for name in header):  # /proc/self/environ, a binary file: never echoed into a report
        yield RowProblem(1, f"{where}:1: the header holds a NUL byte: not a CSV text file; give a UTF-8 CSV of "
                            "queries")
        return
    bad = next((name for name in header if _SURROGATE_RE.search(name)), None)
    if bad is not None:
        yield RowProblem(1, f"{where}:1: the header is not UTF-8 text (bytes {_bad_bytes(bad)}); save the file as "
                            "UTF-8")
        return
    needed = [spec.id, spec.query, *spec.followups]
    missing = [name for name in needed if name not in header]
    if missing:
        shown = ", ".join(repr(_short(name)) for name in header[:MAX_SHOWN_COLUMNS])
        more = f" and {len(header) - MAX_SHOWN_COLUMNS:,} more" if len(header) > MAX_SHOWN_COLUMNS else ""
        yield RowProblem(1, f"{where}:1: column(s) {', '.join(map(repr, missing))} not in the header (its columns: "
                            f"{shown}{more}); name the columns under 'queries' (id, query, followups) or fix the "
                            "header")
        return
    index = {name: header.index(name) for name in needed}
    pending: QueryRow | None = None
    line = lines.count
    rows = 0
    while True:
        start = line + 1
        try:
            cells = next(reader, None)
        except (csv.Error, _LineTooLong) as exc:
            rows += 1
            if pending is not None:
                yield pending
                pending = None
            if lines.count == line:  # no progress: the reader cannot go on
                yield RowProblem(start, f"{where}:{start}: cannot be read as CSV ({exc}); the rest of the file "
                                        "was not read")
                break
            line = lines.count
            yield RowProblem(start, f"{where}:{start}: cannot be read as CSV ({exc})")
            continue
        if cells is None:
            break
        line = lines.count
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        rows += 1
        if rows > MAX_CSV_ROWS:
            yield RowProblem(start, f"{where}:{start}: more than {MAX_CSV_ROWS:,} rows (MAX_CSV_ROWS); split the "
                                    "file, the rest was not read")
            break
        problem = _row_problem(cells, header, index, spec, start)
        if problem is not None:
            if pending is not None:  # in file order (a bad row also ends the rows grouped before it)
                yield pending
                pending = None
            yield RowProblem(start, problem)
            continue
        row = QueryRow(start, cells[index[spec.id]].strip(), cells[index[spec.query]].strip(),
                       tuple(text for name in spec.followups if (text := cells[index[name]].strip())))
        if pending is not None and (pending.id, pending.query) == (row.id, row.query):
            pending = QueryRow(pending.line, pending.id, pending.query, pending.followups + row.followups)
            continue
        if pending is not None:
            yield pending
        pending = row
    if pending is not None:
        yield pending
    if rows == 0:  # a header and nothing else: no conversation would run, and nothing would say so
        yield RowProblem(2, f"{where}: the CSV of queries has a header and no rows; add a row per conversation "
                            "(or remove the 'queries' field)")


def _row_problem(cells: list[str], header: list[str], index: Mapping[str, int], spec: QueriesSpec,
                 line: int) -> str | None:
    where = f"{spec.csv}:{line}"
    if len(cells) > len(header):
        return (f"{where}: column {len(header) + 1}: the row has {len(cells)} cells, the header {len(header)}; a cell "
                f"holding the delimiter {spec.delimiter!r} must be in double quotes")
    for name, column in index.items():
        if column >= len(cells):
            return (f"{where}: column {name!r}: the cell is missing (the row has {len(cells)} of the header's "
                    f"{len(header)} cells)")
        if "\x00" in cells[column]:
            return f"{where}: column {name!r}: holds a NUL byte (not text); save the file as a UTF-8 CSV"
        if _SURROGATE_RE.search(cells[column]):
            return (f"{where}: column {name!r}: not UTF-8 text (bytes {_bad_bytes(cells[column])}); save the file "
                    "as UTF-8")
    for name, what in ((spec.id, "id"), (spec.query, "query")):
        if not cells[index[name]].strip():
            return f"{where}: column {name!r}: the {what} is empty; every row needs an id and a query"
    return None
