"""A CSV of queries with 100 000 rows: the time and memory of reading it as a stream, and of loading the suite
file that names it (one scenario per row, as collection does).

    python benchmarks/queries_csv.py [ROWS]
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from pytest_llmsim.model.queries_csv import QueriesSpec, iter_query_rows
from pytest_llmsim.model.scenario import load_scenario_file


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv_path = folder / "q.csv"
        with csv_path.open("w", encoding="utf-8", newline="") as handle:
            handle.write("Patient ID,Initial Query,Possible Follow up\n")
            for i in range(rows):
                handle.write(f"patient_{i},Prepare the tumor board for patient {i} please,What is the stage?\n")
        suite = folder / "s.yaml"
        suite.write_text("defaults: {customer: proceed, max_turns: 8}\nqueries: {csv: q.csv, id: Patient ID, "
                         "query: Initial Query, followups: Possible Follow up}\n", encoding="utf-8")
        print(f"rows: {rows:,}; file: {csv_path.stat().st_size / 1e6:.1f} MB")

        spec = QueriesSpec(csv_path, "Patient ID", "Initial Query", ("Possible Follow up",), ",")
        started = time.perf_counter()
        count = sum(1 for _ in iter_query_rows(spec))
        print(f"stream: {count:,} rows in {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        entries = load_scenario_file(suite)
        print(f"suite: {len(entries):,} scenarios in {time.perf_counter() - started:.2f} s")
        del entries
        tracemalloc.start()
        started = time.perf_counter()
        count = sum(1 for _ in iter_query_rows(spec))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"stream: {count:,} rows in {elapsed:.2f} s (under tracemalloc), peak {peak / 1e6:.2f} MB")

        tracemalloc.start()
        started = time.perf_counter()
        entries = load_scenario_file(suite)
        elapsed = time.perf_counter() - started
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"suite: {len(entries):,} scenarios in {elapsed:.2f} s (under tracemalloc), held {current / 1e6:.1f} MB "
              f"({current / len(entries):,.0f} bytes a scenario), peak {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
