"""The viewer's charts: inline SVG drawn on the server (no script, no stylesheet or font from anywhere).

``run_model`` names the model a run tested (the agent's, as the run's settings recorded it); ``runs_charts`` draws
the runs over time, one line per model, for the pass rate, the mean score and the cost. Every text in a chart goes
through ``esc``, the viewer's one escaping helper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from pytest_llmsim.history.store import RunInfo

# Colour-blind-safe (Okabe-Ito), then greys for the rest.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#888888")
DOTS_UP_TO = 300  # a series with at most this many points also gets a dot per run (with a tooltip)
UNKNOWN_MODEL = "model not recorded"


def esc(value: Any) -> str:
    """The one escaping helper of the viewer's pages: any value as HTML/SVG text or attribute (quotes too)."""
    return escape(str(value), quote=True)


def run_model(run: RunInfo) -> str:
    """The model a run tested: the agent's models it called (its settings' ``models``), else the configured agent
    model, else the run's model; ``model not recorded`` for a run (a service batch) that stored none."""
    settings = run.settings or {}
    models = settings.get("models")
    agent = models.get("agent") if isinstance(models, Mapping) else None
    if isinstance(agent, list) and agent:
        return ", ".join(str(name) for name in agent)
    for name in ("llmsim_agent_model", "llmsim_model"):
        if settings.get(name):
            return str(settings[name])
    return UNKNOWN_MODEL


def mean_score(run: RunInfo) -> float | None:
    stats = run.figure("score_statistics")
    value = stats.get("mean") if isinstance(stats, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]] = field(default_factory=list)  # (run index, value)


def by_model(runs: Sequence[RunInfo], value: Callable[[RunInfo], Any]) -> list[Series]:
    """One series per model, in order of first run, of ``value(run)`` (runs without a number left out)."""
    series: dict[str, Series] = {}
    for index, run in enumerate(runs):
        figure = value(run)
        if _is_number(figure):
            model = run_model(run)
            series.setdefault(model, Series(model)).points.append((index, float(figure)))
    return list(series.values())


def line_chart(title: str, series: Sequence[Series], *, runs: Sequence[RunInfo], low: float, high: float,
               label: Callable[[float], str], width: int = 720, height: int = 150) -> str:
    """An SVG line chart over the runs (oldest left): one polyline per series, its legend under it."""
    if not any(s.points for s in series):
        return f"<p>No run with a {esc(title.lower())} yet.</p>"
    left, top = 56, 8
    step = width / max(1, len(runs) - 1)
    span = (high - low) or 1.0

    def x(index: int) -> float:
        return left + (index * step if len(runs) > 1 else width / 2)

    def y(value: float) -> float:
        return top + height - (min(max(value, low), high) - low) / span * height

    parts = [f"<rect x='{left}' y='{top}' width='{width}' height='{height}' fill='#fafafa' stroke='#ddd'/>",
             f"<text x='{left - 4}' y='{top + 10}' font-size='11' text-anchor='end'>{esc(label(high))}</text>",
             f"<text x='{left - 4}' y='{top + height}' font-size='11' text-anchor='end'>{esc(label(low))}</text>",
             f"<text x='{left}' y='{top + height + 14}' font-size='11'>{esc(runs[0].created_at[:10])}</text>",
             f"<text x='{left + width}' y='{top + height + 14}' font-size='11' text-anchor='end'>"
             f"{esc(runs[-1].created_at[:10])}</text>"]
    legend = []
    for number, s in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in s.points)
        parts.append(f"<polyline class='series' data-model='{esc(s.label)}' fill='none' stroke='{colour}' "
                     f"stroke-width='2' points='{coords}'><title>{esc(s.label)}</title></polyline>")
        if len(s.points) <= DOTS_UP_TO:
            parts.extend(f"<circle cx='{x(i):.1f}' cy='{y(v):.1f}' r='3' fill='{colour}'><title>"
                         f"{esc(runs[i].run_id[:8])} {esc(runs[i].created_at[:16].replace('T', ' '))} "
                         f"{esc(s.label)}: {esc(label(v))}</title></circle>" for i, v in s.points)
        legend.append(f"<span class='legend'><svg width='12' height='12' aria-hidden='true'><rect width='12' "
                      f"height='12' fill='{colour}'/></svg> {esc(s.label)} ({len(s.points)} run(s))</span>")
    return (f"<figure class='chart'><figcaption>{esc(title)}</figcaption><svg role='img' "
            f"aria-label='{esc(title)} over the runs, per model' width='{left + width + 8}' "
            f"height='{top + height + 20}'>{''.join(parts)}</svg><div>{' '.join(legend)}</div></figure>")


def runs_charts(runs: Sequence[RunInfo]) -> str:
    """The runs over time, per model: pass rate (0-100%), mean judge score (1-3) and cost (0 to the highest)."""
    if not runs:
        return "<p>No run yet.</p>"
    cost = by_model(runs, lambda run: run.figure("total_cost_usd"))
    top_cost = max((v for s in cost for _, v in s.points), default=0.0) or 1.0
    return "".join((
        line_chart("Pass rate", by_model(runs, lambda run: run.figure("success_rate")), runs=runs, low=0.0,
                   high=1.0, label="{:.0%}".format),
        line_chart("Mean score", by_model(runs, mean_score), runs=runs, low=1.0, high=3.0, label="{:.2f}".format),
        line_chart("Cost (USD)", cost, runs=runs, low=0.0, high=top_cost, label="${:.4f}".format),
    ))
