"""``llmsim merge shard-*.json --results all.json --markdown summary.md``: CI shards as one run (no pytest).

The shards' JSON exports (``--llmsim-shard=K/N --llmsim-results shard-K.json``) are checked and merged by
``reporting.merge``; this front writes what the single pytest run would have written (the export, in the format
its extension names, the markdown summary, ``$GITHUB_STEP_SUMMARY``), prints its llmsim summary and exits with
its exit status: 0 passed, 1 a test failed or a gate was missed, 4 a backend is missing, 5 nothing was collected
(pytest's codes); 2 when the exports are not the shards of one run (one line naming what differs).

Gates: those the shards were configured with (their ini file), each flag here overriding one. Baseline: the one
the shards compared with (its path, relative to the current folder, as they recorded it), or ``--baseline``; it
must hold the same records (checked by digest).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from pathlib import Path
from typing import Any

from pytest_llmsim.apps.cli.common import USAGE
from pytest_llmsim.errors import ConfigError

GATE_FLAGS = (  # (flag, ``Gates`` field, option-table row whose parsing it uses)
    ("--min-mean-score", "min_mean_score", "llmsim_min_mean_score"),
    ("--min-pass-rate", "min_pass_rate", "llmsim_min_pass_rate"),
    ("--max-cost-usd", "max_cost_usd", "llmsim_max_cost_usd"),
    ("--min-pass-hat-k", "min_pass_hat_k", "llmsim_min_pass_hat_k"),
    ("--max-score-drop", "max_score_drop", "llmsim_max_score_drop"),
)


def add_command(commands: Any) -> None:
    """The ``merge`` subcommand, on the ``llmsim`` command's subparsers."""
    merge = commands.add_parser("merge", help="merge the JSON exports of CI shards (--llmsim-shard) into one run")
    merge.add_argument("files", nargs="+", metavar="SHARD_EXPORT", help="each shard's --llmsim-results JSON export")
    merge.add_argument("--results", metavar="FILE", help="write the merged export (.json, .csv or .ndjson)")
    merge.add_argument("--markdown", metavar="FILE", help="write the markdown summary (also appended to "
                       "$GITHUB_STEP_SUMMARY when set)")
    merge.add_argument("--baseline", metavar="PATH", help="the baseline the shards compared with (default: the path "
                       "they recorded)")
    merge.add_argument("--prices", metavar="FILE", help="price file for a recordings baseline (default: the shards')")
    for flag, _, row in GATE_FLAGS:
        merge.add_argument(flag, metavar="X", help=f"gate, as {row} (default: the shards')")
    merge.add_argument("--fail-on-regression", action="store_const", const=True, default=None,
                       help="gate, as llmsim_fail_on_regression (default: the shards')")
    merge.add_argument("--quiet", action="store_true", help="print nothing but errors")
    merge.set_defaults(handler=command_merge)


def _gate_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from pytest_llmsim.config.options import ROWS, parse_value

    overrides: dict[str, Any] = {}
    for flag, name, row in GATE_FLAGS:
        text = getattr(args, name)
        if text is not None:
            option = ROWS[row]
            overrides[name] = parse_value(dataclasses.replace(option, flag=flag), text, Path.cwd())
    if args.fail_on_regression:
        overrides["fail_on_regression"] = True
    return overrides


def _baseline(args: argparse.Namespace, exports: list[Any]) -> Any:
    """The baseline to compare with: ``--baseline``, else the one the shards recorded; checked against their digest."""
    from pytest_llmsim.llm.pricing import load_price_table
    from pytest_llmsim.reporting.baseline import load_baseline
    from pytest_llmsim.reporting.merge import baseline_digest

    used = exports[0].block.get("baseline")
    settings = exports[0].block["settings"]
    path_text = args.baseline or (settings.get("llmsim_baseline") if used else None)
    if not path_text:
        return None
    prices_text = args.prices or settings.get("llmsim_prices")
    prices = load_price_table(Path(prices_text) if prices_text else None)
    try:
        baseline = load_baseline(Path(path_text), prices)
    except ConfigError as exc:
        if args.baseline or not isinstance(used, dict):
            raise
        raise ConfigError(f"{exc}; the shards compared with this baseline: give it with --baseline") from None
    if isinstance(used, dict):
        baseline = dataclasses.replace(baseline, shown_as=str(used.get("label") or ""))
        if baseline_digest(baseline) != used.get("digest"):
            raise ConfigError(f"the baseline {path_text} is not the one the shards compared with "
                              f"({used.get('label')}): its records differ; give that baseline with --baseline")
    return baseline


def command_merge(args: argparse.Namespace) -> int:
    from pytest_llmsim.reporting.exports import write_results
    from pytest_llmsim.reporting.markdown import STEP_SUMMARY_ENV, append_step_summary, run_markdown, write_markdown
    from pytest_llmsim.reporting.merge import check_shards, load_shard_export, merge_shards
    from pytest_llmsim.reporting.summary import summary_dict
    from pytest_llmsim.reporting.terminal import Line, summary_lines

    try:
        exports = [load_shard_export(Path(name)) for name in args.files]
        check_shards(exports)
        overrides = _gate_overrides(args)
        run = merge_shards(exports, baseline=_baseline(args, exports), gate_overrides=overrides)
    except ConfigError as exc:  # not one run's shards, a bad flag or baseline: one line, nothing written
        print(f"llmsim: {exc}", file=sys.stderr)
        return USAGE
    generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    written: list[str] = []
    try:
        if args.results:
            path = Path(args.results)
            comparison = run.comparison
            compared = comparison.summary_dict() if comparison is not None else None
            if compared is not None and run.statistics is not None:
                compared["statistics"] = run.statistics.to_dict()
            document = summary_dict(run.summary, run.gates, run.missed, compared)
            write_results(path, run.records, document, run_id=run.run_id, generated_at=generated,
                          comparison=comparison, baseline_field=True,
                          sections={"merged_from": run.merged_from,
                                    **({} if run.calibration is None else {"calibration": run.calibration})})
            written.append(f"results written to {path}")
        step_summary = bool(os.environ.get(STEP_SUMMARY_ENV)) and bool(run.records)
        if args.markdown or step_summary:
            stats = run.statistics
            text = run_markdown(run.summary, run.gates, run.missed, run.records, run.comparison,
                                statistics=stats.statistics_line() if stats is not None else "",
                                marks=stats.marks() if stats is not None else None)
            if args.markdown:
                write_markdown(Path(args.markdown), text)
                written.append(f"markdown summary written to {args.markdown}")
            if step_summary:
                append_step_summary(text)
                written.append(f"summary appended to ${STEP_SUMMARY_ENV}")
    except OSError as exc:
        print(f"llmsim: cannot write the merged run: {exc}", file=sys.stderr)
        return USAGE
    if not args.quiet:
        notes = [f"llmsim: merged {len(exports)} shards", *(f"llmsim: {note}" for note in run.notes),
                 *(f"llmsim: {line}" for line in written)]
        for line in summary_lines(run.records, run.summary, gates=run.gates, missed=run.missed, verbosity=0,
                                  notes=[Line(note) for note in notes], backend=run.backend,
                                  comparison=run.comparison):
            print(f"==== {line.text} ====" if line.markup.get("separator") else line.text)
    sys.stdout.flush()
    return run.exit_status
