"""Fit the ``logprobs`` judge's cut-points on a calibration run's export, or apply given ones to it.

Judge the TUNING half (never the held-out one) with the logprobs method and keep the export:

    python -m pytest scenarios/ -k calibration_only --llmsim-calibrate calibration/dev \\
        -o llmsim_prompts_dir=pytest_llmsim/templates --llmsim-judge-method logprobs \\
        --llmsim-cache-dir /tmp/fresh-cache --llmsim-results dev.json
    python calibration/fit_cutpoints.py dev.json                  # fit: at most 10% false passes
    python calibration/fit_cutpoints.py dev.json --apply 1.5,2.5  # what given cut-points give on it

It prints the expected score's range per human score, the fitted cut-points with their accuracy, false passes,
mean absolute error and confusion table on the cases they were fitted on (optimistic by construction), and a
leave-one-out estimate (each case scored by cut-points fitted on the others), the figure to read before measuring
the held-out half once, with the cut-points given as ``--llmsim-logprob-thresholds LOW,HIGH``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_llmsim.config.options import parse_cuts
from pytest_llmsim.engine.calibration import wilson_interval
from pytest_llmsim.engine.cutpoints import (
    Case,
    CutFit,
    apply_cutpoints,
    cases_from_export,
    fit_cutpoints,
    leave_one_out,
)
from pytest_llmsim.errors import ConfigError


def describe(title: str, fit: CutFit) -> list[str]:
    interval = wilson_interval(fit.matches, fit.total)
    ci = f" (95% CI {interval[0]:.1%}-{interval[1]:.1%}, Wilson)" if interval else ""
    lines = [f"{title}: cut-points {fit.thresholds[0]:.5f},{fit.thresholds[1]:.5f}",
             f"  accuracy {fit.accuracy:.1%}{ci}: {fit.matches} of {fit.total}",
             f"  false passes: {fit.false_passes} of {fit.should_fail} ({fit.false_pass_rate:.1%})",
             f"  mean absolute error: {fit.mean_absolute_error:.3f}",
             "  human \\ judge      1      2      3"]
    lines += [f"  {h:>13}" + "".join(f"{fit.confusion[h][j]:>7}" for j in (1, 2, 3)) for h in (1, 2, 3)]
    return lines


def spread(cases: list[Case]) -> list[str]:
    lines = ["expected score by human score:"]
    for human in (1, 2, 3):
        values = sorted(case.expected for case in cases if case.human == human)
        if values:
            lines.append(f"  human {human}: n={len(values)} min {values[0]:.4f} median {values[len(values) // 2]:.4f} "
                         f"max {values[-1]:.4f} mean {sum(values) / len(values):.4f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("export", type=Path, help="a calibration run's --llmsim-results JSON")
    parser.add_argument("--min-score", type=int, default=2, help="the passing score (default 2)")
    parser.add_argument("--max-false-pass-rate", type=float, default=0.1,
                        help="ceiling on passed conversations a person scored below --min-score (default 0.1)")
    parser.add_argument("--apply", metavar="LOW,HIGH", help="only report what these cut-points give")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        cases = cases_from_export(json.loads(args.export.read_text(encoding="utf-8")))
        thresholds = parse_cuts("--apply", args.apply) if args.apply else None
    except (OSError, ValueError, ConfigError) as exc:
        print(f"fit_cutpoints: {args.export}: {exc}", file=sys.stderr)
        return 2
    if thresholds is not None:
        applied = apply_cutpoints(cases, thresholds, args.min_score)
        print(json.dumps(applied.to_dict()) if args.json else "\n".join([*spread(cases), *describe("given", applied)]))
        return 0
    fit = fit_cutpoints(cases, min_score=args.min_score, max_false_pass_rate=args.max_false_pass_rate)
    loo = leave_one_out(cases, min_score=args.min_score, max_false_pass_rate=args.max_false_pass_rate)
    scale = apply_cutpoints(cases, (1.5, 2.5), args.min_score)
    if args.json:
        print(json.dumps({"fit": fit.to_dict(), "leave_one_out": loo.to_dict(), "scale": scale.to_dict()}))
        return 0
    print("\n".join([*spread(cases), *describe("the scale's cut-points", scale),
                     *describe(f"fitted (at most {args.max_false_pass_rate:.0%} false passes), on the cases fitted",
                               fit),
                     *describe("leave-one-out estimate (each case cut by a fit on the others; full fit's "
                               "cut-points shown)", loo),
                     f"measure once on the held-out half with: --llmsim-logprob-thresholds "
                     f"{fit.thresholds[0]:.5f},{fit.thresholds[1]:.5f}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
