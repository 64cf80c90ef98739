"""``--llmsim-history``: the controller appends the run to the history store at session end, and the baseline
comparison gets its statistics (``history.compare``), with noisy scenarios and flakiness read from the history.

Written once per run, by the controller only (xdist workers have no report plugin), in one transaction: an
interrupted run is stored as ``interrupted``, one stopped early as ``incomplete``. A store that cannot be used (a
corrupt file, a lock held too long, a newer schema, a read-only disk) is one warning line: the run's verdicts and
exit status stand.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.errors import HistoryError
from pytest_llmsim.history.compare import (
    DEFAULT_ALPHA,
    Flakiness,
    RunComparison,
    compare_runs,
    flakiness,
    noisy_scenarios,
)
from pytest_llmsim.history.store import (
    COMPLETED,
    INTERRUPTED,
    HistoryStore,
    git_info,
    verdict_settings,
)
from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.reporting.baseline import Baseline
from pytest_llmsim.reporting.summary import RunSummary

INCOMPLETE = "incomplete"
FLAKY_WINDOW = 20  # runs of the history the markdown summary's flakiness looks at
FLAKY_SHOWN = 10
NOISE_WINDOW = 100  # runs of the history searched for verdicts that flip with no change to the agent


def run_status(summary: RunSummary) -> str:
    if summary.interrupted:
        return INTERRUPTED
    return COMPLETED if summary.complete else INCOMPLETE


class RunHistory:
    """The history side of one session (controller only)."""

    def __init__(self, path: Path, resolved: ResolvedOptions, rootdir: Path) -> None:
        self.store = HistoryStore(path)
        self.resolved = resolved
        self.rootdir = rootdir
        self.warnings: list[str] = []

    def _warn(self, exc: HistoryError) -> None:
        text = f"llmsim: warning: {exc} (the run's verdicts stand)"
        if text not in self.warnings:
            self.warnings.append(text)

    def append(self, *, run_id: str, records: Sequence[ScenarioRecord], summary: RunSummary,
               summary_document: dict[str, Any], started_at: str) -> str | None:
        """Store the run; a note saying where (None when it could not be stored: a warning instead)."""
        try:
            count = self.store.append_run(run_id=run_id, status=run_status(summary), records=records,
                                          summary=summary_document, started_at=started_at,
                                          git=git_info(self.rootdir),
                                          settings=verdict_settings(self.resolved.values, records))
        except HistoryError as exc:
            self._warn(exc)
            return None
        state = run_status(summary)
        return f"llmsim: run {run_id[:8]} ({count} records{'' if state == COMPLETED else ', ' + state}) appended " \
               f"to the history {self.store.path}"

    def noisy(self) -> set[str]:
        """Scenarios the history saw flip with no change to the agent (empty without a usable history)."""
        if not self.store.path.exists():
            return set()
        try:
            return noisy_scenarios(self.store.run_verdicts(NOISE_WINDOW))
        except HistoryError as exc:
            self._warn(exc)
            return set()

    def flaky(self) -> list[Flakiness]:
        """The scenarios that flipped or keep failing over the last runs (this one included once stored)."""
        if not self.store.path.exists():
            return []
        try:
            found = flakiness(self.store.run_verdicts(FLAKY_WINDOW), last=FLAKY_WINDOW)
        except HistoryError as exc:
            self._warn(exc)
            return []
        return [f for f in found if f.flips or f.failing_since is not None]


def statistics(records: Sequence[ScenarioRecord], baseline: Baseline, *, alpha: float | None,
               history: RunHistory | None) -> RunComparison:
    """This run compared with the baseline with statistics; noisy scenarios from the history when there is one."""
    noisy = history.noisy() if history is not None else set()
    return compare_runs(baseline.records.values(), records, alpha=alpha if alpha is not None else DEFAULT_ALPHA,
                        noisy=noisy, old_label=baseline.label, new_label="this run")
