"""A PNG bar chart of the run's score distribution (matplotlib, the optional ``histogram`` extra).

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global backend switch and no window,
even inside a test session that uses matplotlib itself.
"""

from __future__ import annotations

import io
from pathlib import Path

from pytest_llmsim.reporting.exports import atomic_write_bytes
from pytest_llmsim.reporting.summary import RunSummary, incomplete_cause, outcome_counts, pass_rate_text, plural

INSTALL_HINT = "pip install 'pytest-llmsim[histogram]'"
_COLOURS = {"1": "#d9534f", "2": "#f0ad4e", "3": "#5cb85c", "error": "#9e9e9e"}


class HistogramUnavailable(RuntimeError):
    """matplotlib is not installed."""


def histogram_title(summary: RunSummary) -> str:
    stats = summary.score_statistics
    mean = "n/a" if stats.mean is None else f"{stats.mean:g}"
    partial = ""
    if not summary.complete:
        partial = f" ({incomplete_cause(summary)}: {summary.unfinished_scenarios} did not finish)"
    return (f"{plural(summary.total_scenarios, 'scenario')}: {outcome_counts(summary)}; pass rate "
            f"{pass_rate_text(summary)}{partial}\n"
            f"mean score {mean}; {summary.total_tokens + summary.replayed_tokens} tokens; "
            f"cost ${summary.total_cost_usd:.6f} (saved ${summary.saved_cost_usd:.6f} by replays)")


def draw_histogram(summary: RunSummary, path: Path) -> None:
    """Write the score distribution of ``summary`` to ``path`` as a PNG (atomically)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "matplotlib":
            raise HistogramUnavailable(f"the score histogram needs matplotlib, which is not installed: "
                                       f"{INSTALL_HINT}") from None
        raise HistogramUnavailable(f"matplotlib is installed but cannot be imported: {exc}") from None
    labels = ["1", "2", "3"]
    counts = [summary.score_distribution.get(f"score_{label}", 0) for label in labels]
    if summary.errored_scenarios:
        labels.append("error")
        counts.append(summary.errored_scenarios)
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(labels, counts, color=[_COLOURS[label] for label in labels], edgecolor="#333333", width=0.6)
    axes.bar_label(bars, labels=[str(c) for c in counts], padding=2)
    axes.set_xlabel("score")
    axes.set_ylabel("scenarios")
    axes.set_ylim(0, max([*counts, 1]) * 1.2)
    locator = axes.yaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the default AutoLocator is one
        locator.set_params(integer=True)
    axes.set_title(histogram_title(summary), fontsize=9, parse_math=False)  # "$" is not mathtext here
    figure.suptitle("pytest-llmsim score distribution", fontsize=12, fontweight="bold")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
