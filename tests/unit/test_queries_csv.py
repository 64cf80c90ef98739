"""A CSV of initial queries with follow-ups as scenarios (``model.queries_csv``): rows, grouping, names, one
problem per bad row naming file, line and column, and a 100 000-row file read as a stream."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from pytest_llmsim.model.queries_csv import QueriesSpec, QueryRow, RowProblem, iter_query_rows
from pytest_llmsim.model.scenario import load_scenario_file

HEADER = "Patient ID,Initial Query,Possible Follow up\n"
COLUMNS = "{csv: q.csv, id: Patient ID, query: Initial Query, followups: Possible Follow up}"


def suite(tmp_path: Path, csv_bytes: bytes, *, defaults: str = "{max_turns: 9}", extra: str = "") -> Path:
    (tmp_path / "q.csv").write_bytes(csv_bytes)
    path = tmp_path / "s.yaml"
    path.write_text(f"defaults: {defaults}\nqueries: {COLUMNS}\n{extra}", encoding="utf-8")
    return path


def test_rows_become_scripted_scenarios_with_follow_ups_grouped_and_ids_made_unique(tmp_path: Path) -> None:
    body = (HEADER + "patient_4,Prepare the tumor board,What are the pathology findings?\n"
            "patient_4,Prepare the tumor board,What is the stage?\n"
            "\n"
            "patient_4,Summarise the history,\n"
            "p5,\"Hello, team\",\"Line one\nline two\"\n").encode()
    entries = load_scenario_file(suite(tmp_path, body, extra="scenarios: [{name: p5, turns: [hi]}]\n"))
    assert [(e.item_name, e.problem) for e in entries] == [
        ("p5", None), ("patient_4", None), ("patient_4#2", None), ("p5#2", None)]
    grouped = entries[1].scenario
    assert grouped is not None and grouped.turns == (
        "Prepare the tumor board", "What are the pathology findings?", "What is the stage?")
    assert grouped.first_speaker == "client" and grouped.max_turns == 9 and grouped.customer is None
    assert entries[3].scenario is not None and entries[3].scenario.turns == ("Hello, team", "Line one\nline two")


def test_customer_proceed_from_the_defaults(tmp_path: Path) -> None:
    entries = load_scenario_file(suite(tmp_path, (HEADER + "p1,Start,Next\n").encode(),
                                       defaults="{customer: proceed}"))
    assert entries[0].scenario is not None and entries[0].scenario.customer == "proceed"


def test_customer_proceed_needs_turns(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- {name: a, customer: proceed}\n- {name: b, customer: llm, turns: [hi]}\n", encoding="utf-8")
    problems = [e.problem for e in load_scenario_file(path)]
    assert "'customer: proceed' answers \"proceed\" after the scripted 'turns'" in str(problems[0])
    assert problems[1] is not None and "field 'customer'" in problems[1]


def test_each_bad_row_is_one_problem_naming_file_line_and_column_and_the_others_still_load(tmp_path: Path) -> None:
    body = (HEADER.encode() + b"p1,First,\n"
            b"p2,,follow\n"                       # line 3: empty query
            b",Query without id,\n"              # line 4: empty id
            b"p3,\"a, b\",c,extra\n"             # line 5: one cell too many (an unquoted delimiter)
            b"p4\n"                               # line 6: cells missing
            b"p5,caf\xe9 latin-1,ok\n"           # line 7: not UTF-8
            b"p/6,slash in the id,\n"             # line 8: an id that cannot be a test id
            b"p7,Last,\n")
    csv_path = tmp_path / "q.csv"
    entries = load_scenario_file(suite(tmp_path, body))
    valid = [e.item_name for e in entries if e.problem is None]
    assert valid == ["p1", "p7"]
    problems = {e.item_name: e.problem for e in entries if e.problem is not None}
    assert list(problems) == ["q.csv:3", "q.csv:4", "q.csv:5", "q.csv:6", "q.csv:7", "q.csv:8"]
    expected = {
        "q.csv:3": f"{csv_path}:3: column 'Initial Query': the query is empty",
        "q.csv:4": f"{csv_path}:4: column 'Patient ID': the id is empty",
        "q.csv:5": f"{csv_path}:5: column 4: the row has 4 cells, the header 3",
        "q.csv:6": f"{csv_path}:6: column 'Initial Query': the cell is missing",
        "q.csv:7": f"{csv_path}:7: column 'Initial Query': not UTF-8 text (bytes 0xe9)",
        "q.csv:8": f"{csv_path}:8: column 'Patient ID': the id 'p/6' must not contain '::' or '/'",
    }
    for name, text in expected.items():
        assert text in str(problems[name]), problems[name]


def test_a_missing_column_is_one_problem_naming_the_header_and_the_file_s_scenarios_still_load(
        tmp_path: Path) -> None:
    entries = load_scenario_file(suite(tmp_path, b"id,Question\np1,hi\n", extra="scenarios: [{name: own}]\n"))
    assert entries[0].item_name == "own" and entries[0].problem is None
    assert len(entries) == 2 and entries[1].scenario is None
    assert f"{tmp_path / 'q.csv'}:1: column(s) 'Patient ID', 'Initial Query', 'Possible Follow up' not in the " \
           "header (its columns: 'id', 'Question')" in str(entries[1].problem)


@pytest.mark.parametrize(("queries", "problem"), [
    ("{csv: missing.csv}", "cannot read the CSV of queries"),
    ("{csv: q.csv, nope: 1}", "field 'queries': unknown field(s) 'nope'"),
    ("{csv: q.csv, followups: 3}", "'followups' must be a column name or a list of them"),
    ("{csv: q.csv, delimiter: ab}", "'delimiter' must be one character"),
    ("[q.csv]", "field 'queries': must be a CSV path or an object"),
])
def test_a_bad_queries_field_is_one_problem(tmp_path: Path, queries: str, problem: str) -> None:
    (tmp_path / "q.csv").write_text("id,query\np1,hi\n", encoding="utf-8")
    path = tmp_path / "s.yaml"
    path.write_text(f"queries: {queries}\n", encoding="utf-8")
    entries = load_scenario_file(path)
    assert len(entries) == 1 and entries[0].scenario is None and problem in str(entries[0].problem)


def test_default_columns_a_bom_and_another_delimiter(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_bytes("\ufeffid;query\np1;Bonjour, équipe\n".encode())
    path = tmp_path / "s.yaml"
    path.write_text("queries: {csv: q.csv, delimiter: ';'}\n", encoding="utf-8")
    (entry,) = load_scenario_file(path)
    assert entry.item_name == "p1" and entry.scenario is not None and entry.scenario.turns == ("Bonjour, équipe",)


def write_big_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(HEADER)
        for i in range(rows):
            handle.write(f"patient_{i},Prepare the tumor board for patient {i} please,What is the stage of {i}?\n")


@pytest.mark.slow
def test_a_100000_row_csv_is_read_as_a_stream_in_bounded_memory(tmp_path: Path) -> None:
    """The reader never holds the file: tracemalloc's peak over 100 000 rows (a 9 MB file) stays under 1 MB."""
    path = tmp_path / "big.csv"
    write_big_csv(path, 100_000)
    assert path.stat().st_size > 8_000_000
    spec = QueriesSpec(path, "Patient ID", "Initial Query", ("Possible Follow up",), ",")
    tracemalloc.start()
    try:
        count = last = 0
        for row in iter_query_rows(spec):
            assert isinstance(row, QueryRow)
            count += 1
            last = row.line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (100_000, 100_001)
    assert peak < 1_000_000, f"peak {peak:,} bytes"


def test_the_bound_holds_with_bad_rows_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    with path.open("wb") as handle:
        handle.write(HEADER.encode())
        for i in range(20_000):
            handle.write(b"p%d,,x\n" % i if i % 2 else b"p%d,caf\xe9,x\n" % i)
    spec = QueriesSpec(path, "Patient ID", "Initial Query", (), ",")
    tracemalloc.start()
    try:
        problems = sum(1 for row in iter_query_rows(spec) if isinstance(row, RowProblem))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == 20_000 and peak < 1_000_000


@pytest.mark.parametrize("target", ["/dev/zero", "a folder"])
def test_a_link_to_dev_zero_or_a_folder_is_one_problem_not_a_hang(tmp_path: Path, target: str) -> None:
    """/dev/zero has no line end: read as a text file it filled the memory, line after endless line."""
    if target == "a folder":
        (tmp_path / "folder").mkdir()
        target = str(tmp_path / "folder")
    (tmp_path / "q.csv").symlink_to(target)
    path = tmp_path / "s.yaml"
    path.write_text("queries: {csv: q.csv}\n", encoding="utf-8")
    (entry,) = load_scenario_file(path)
    assert entry.scenario is None and "cannot read the CSV of queries: is a" in str(entry.problem)
    assert "not a regular file" in str(entry.problem)


def test_a_header_only_csv_is_a_problem_not_zero_conversations(tmp_path: Path) -> None:
    entries = load_scenario_file(suite(tmp_path, HEADER.encode() + b"\n\n", extra="scenarios: [{name: own}]\n"))
    assert [e.item_name for e in entries] == ["own", "q.csv:2"]
    assert "the CSV of queries has a header and no rows" in str(entries[1].problem)


def test_a_line_without_end_is_read_in_bounded_pieces_and_skipped(tmp_path: Path) -> None:
    """A 10 MB cell (and a 50 MB file without a line break) costs a bounded piece, not the whole line."""
    path = tmp_path / "q.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id,query\np1," + "x" * 10_000_000 + "\np2,fine\np3," + "y" * 50_000_000)
    spec = QueriesSpec(path, "id", "query", (), ",")
    tracemalloc.start()
    try:
        rows = list(iter_query_rows(spec))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(r).__name__ for r in rows] == ["RowProblem", "QueryRow", "RowProblem"]
    assert isinstance(rows[1], QueryRow) and (rows[1].line, rows[1].id) == (3, "p2")
    assert rows[0].line == 2 and rows[2].line == 4
    assert f"{path}:2: cannot be read as CSV (the line is longer than" in rows[0].message
    assert peak < 40_000_000, f"peak {peak:,} bytes"


def test_a_file_with_nul_bytes_is_never_echoed_into_the_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """``csv: /proc/self/environ`` (NUL-separated) put the whole environment, secrets included, into the missing
    column problem, and from there into every report."""
    monkeypatch.setenv("LLMSIM_TEST_SECRET", "hunter2-do-not-print")
    path = tmp_path / "s.yaml"
    path.write_text("queries: {csv: /proc/self/environ}\n", encoding="utf-8")
    (entry,) = load_scenario_file(path)
    assert "the header holds a NUL byte: not a CSV text file" in str(entry.problem)
    assert "hunter2" not in str(entry.problem)
    entries = load_scenario_file(suite(tmp_path, HEADER.encode() + b"p1,hel\x00lo,\np2,fine,\n"))
    assert [e.item_name for e in entries] == ["q.csv:2", "p2"]
    assert "column 'Initial Query': holds a NUL byte (not text)" in str(entries[0].problem)


def test_a_missing_column_shows_at_most_20_header_cells_of_40_characters(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(30)) + ",API_KEY=sk-0123456789abcdefghijklmnopqrstuvwxyz\n"
    entries = load_scenario_file(suite(tmp_path, header.encode() + b"a,b\n"))
    problem = str(entries[0].problem)
    assert "'c19' and 11 more); name the columns" in problem and "'c20'" not in problem
    header = "Patient ID,API_KEY=sk-0123456789abcdefghijklmnopqrstuvwxyz\n"
    problem = str(load_scenario_file(suite(tmp_path, header.encode() + b"a,b\n"))[0].problem)
    assert "'API_KEY=sk-0123456789abcdefghijklmnopqrs...'" in problem and "tuvwxyz" not in problem
