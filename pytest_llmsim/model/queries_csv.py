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
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CSV_ROWS = 1_000_000
"""Most rows read from one CSV of queries."""
MAX_CELL_CHARS = 1_000_000
"""Longest cell of a CSV of queries (the csv module's own limit is raised to this)."""
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


def _bad_bytes(text: str) -> str:
    """The bytes a surrogate-escaped text stands for that are not UTF-8, as ``0xff 0xfe``."""
    return " ".join(f"0x{ord(ch) - 0xDC00:02x}" for ch in _SURROGATE_RE.findall(text)[:4])


def iter_query_rows(spec: QueriesSpec) -> Iterator[QueryRow | RowProblem]:
    """The CSV's conversations and bad rows, in file order, read one row at a time."""
    where = spec.csv
    try:
        # surrogateescape: a byte that is not UTF-8 spoils its row only (found per cell below), not the file
        handle = spec.csv.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        yield RowProblem(0, f"{where}: cannot read the CSV of queries: {exc.strerror or exc}")
        return
    with handle:
        old_limit = csv.field_size_limit(MAX_CELL_CHARS)
        try:
            yield from _rows(csv.reader(handle, delimiter=spec.delimiter), spec)
        finally:
            csv.field_size_limit(old_limit)


def _rows(reader: Any, spec: QueriesSpec) -> Iterator[QueryRow | RowProblem]:  # Any: csv's reader type is private
    where = spec.csv
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield RowProblem(1, f"{where}:1: the header cannot be read as CSV: {exc}")
        return
    if header is None:
        yield RowProblem(1, f"{where}: the CSV of queries is empty; its first line must name the columns "
                            f"({spec.id!r}, {spec.query!r}, ...)")
        return
    header = [name.strip() for name in header]
    bad = next((name for name in header if _SURROGATE_RE.search(name)), None)
    if bad is not None:
        yield RowProblem(1, f"{where}:1: the header is not UTF-8 text (bytes {_bad_bytes(bad)}); save the file as "
                            "UTF-8")
        return
    needed = [spec.id, spec.query, *spec.followups]
    missing = [name for name in needed if name not in header]
    if missing:
        yield RowProblem(1, f"{where}:1: column(s) {', '.join(map(repr, missing))} not in the header (its columns: "
                            f"{', '.join(map(repr, header))}); name the columns under 'queries' (id, query, "
                            "followups) or fix the header")
        return
    index = {name: header.index(name) for name in needed}
    pending: QueryRow | None = None
    line = reader.line_num
    rows = 0
    while True:
        start = line + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            if pending is not None:
                yield pending
                pending = None
            if reader.line_num == line:  # no progress: the reader cannot go on
                yield RowProblem(start, f"{where}:{start}: cannot be read as CSV ({exc}); the rest of the file "
                                        "was not read")
                break
            line = reader.line_num
            yield RowProblem(start, f"{where}:{start}: cannot be read as CSV ({exc})")
            continue
        if cells is None:
            break
        line = reader.line_num
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
        if _SURROGATE_RE.search(cells[column]):
            return (f"{where}: column {name!r}: not UTF-8 text (bytes {_bad_bytes(cells[column])}); save the file "
                    "as UTF-8")
    for name, what in ((spec.id, "id"), (spec.query, "query")):
        if not cells[index[name]].strip():
            return f"{where}: column {name!r}: the {what} is empty; every row needs an id and a query"
    return None
