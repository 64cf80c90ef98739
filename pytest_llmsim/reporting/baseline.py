"""Baselines: compare this run with an earlier one, scenario by scenario (no pytest).

Why one module: loading a baseline and comparing this run with it read the same record shape under the same counting
conventions (listed below), which are stated once here.

A baseline is a previous run's JSON export (``--llmsim-results run.json``; an NDJSON export works too) or a
recordings directory (e.g. the main branch's ``recordings/``, checked out elsewhere). Scenarios are matched by
node id.

* ``load_baseline(path, prices)`` reads it into ``Baseline`` (one record per scenario); a recording's calls are
  priced with this run's price table, all as live calls. Anything wrong is a one-line ``ConfigError``.
* ``compare(records, baseline)`` gives a ``Comparison``: a ``ScenarioDelta`` for every scenario of this run, in
  run order (one not in the baseline has ``old_status`` None), the node ids new in this run and those of the
  baseline missing from it, and the mean score delta over the scenarios scored in both.
* ``regression_gates`` checks the baseline gates (``llmsim_fail_on_regression``, ``llmsim_max_score_drop``).

Conventions:

* Only a scenario whose outcome in this run counts (``summary.COUNTED_OUTCOMES``) can regress: an xfailed or
  skipped scenario is compared and shown, never a regression. The mean score delta is over the scenarios that
  count in both runs and were scored in both (as the run's mean score leaves xfailed scenarios out).
* Tokens and cost are those of *every* call of the conversation, live or replayed from the cache (a recording's
  calls are all counted as live), so a replayed run compares with a live one.
* A transcript changed when the turns' roles, texts or tool calls (name, arguments, result) differ; flags such as
  ``cached`` and ``scripted`` are not compared.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmsim.errors import CacheError, ConfigError
from pytest_llmsim.llm.pricing import PriceTable, usage_cost
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status, result_stats, turn_key
from pytest_llmsim.reporting.summary import (
    COUNTED_OUTCOMES,
    PASSING_OUTCOMES,
    RECORD_COST_DECIMALS,
    STAT_DECIMALS,
    Gates,
    RunSummary,
    as_records,
    gates_unchecked_reason,
    missed_gates,
    plural,
)
from pytest_llmsim.safe_files import UnreadableFile, read_bounded

NAMED_IN_GATE = 10  # scenarios named in a missed gate's line before "and N more"
MAX_BASELINE_BYTES = 256 * 2**20  # an export of 10 000 scenarios is a few dozen MiB


@dataclass(frozen=True)
class ScenarioDelta:
    """One scenario present in this run, compared with the baseline (``old_*`` None: not in the baseline)."""

    nodeid: str
    scenario: str
    old_status: str | None  # Status value of the baseline ("passed", "failed", "error", "skipped"), None: new
    new_status: str
    old_score: float | int | None  # with trials: the mean of the trials' scores
    new_score: float | int | None
    score_delta: float | int | None  # new - old, None unless both are scored
    newly_failing: bool  # passed in the baseline, failed or errored now (and the outcome counts)
    newly_passing: bool  # failed or errored in the baseline, passes now
    turns_delta: int | None
    tokens_delta: int | None
    cost_delta_usd: float | None
    transcript_changed: bool
    old_transcript: list[dict[str, Any]] = field(default_factory=list)
    new_transcript: list[dict[str, Any]] = field(default_factory=list)
    old_comment: str = ""
    new_comment: str = ""
    old_outcome: str | None = None  # pytest's outcome in the baseline (a recording: from its status)
    new_outcome: str = ""  # pytest's outcome in this run ("": unknown, counted)

    @property
    def counted(self) -> bool:
        """This run's outcome counts (passed, failed, error, xpassed): only then can the scenario regress."""
        return not self.new_outcome or self.new_outcome in COUNTED_OUTCOMES

    @property
    def regressed(self) -> bool:
        """The score dropped, or the scenario newly fails (an xfailed or skipped scenario never regresses)."""
        return self.counted and (self.newly_failing or (self.score_delta is not None and self.score_delta < 0))

    @property
    def is_new(self) -> bool:
        return self.old_status is None

    @property
    def improved(self) -> bool:
        """Not regressed, and newly passing or scored higher."""
        return not self.regressed and not self.is_new and (
            self.newly_passing or (self.score_delta is not None and self.score_delta > 0))

    @property
    def changed(self) -> bool:
        """Compared with a baseline scenario and anything reviewers care about differs: status, score or
        transcript (a tokens or cost difference alone is not a change)."""
        return not self.is_new and (self.regressed or self.improved or self.transcript_changed
                                    or self.old_status != self.new_status or bool(self.score_delta)
                                    or self.old_score != self.new_score)

    @property
    def label(self) -> str:
        """``regressed``, ``improved``, ``changed``, ``new`` or ``unchanged`` (what the reports count)."""
        if self.is_new:
            return "new"
        if self.regressed:
            return "regressed"
        if self.improved:
            return "improved"
        return "changed" if self.changed else "unchanged"

    def to_dict(self) -> dict[str, Any] | None:
        """The export's per-record ``baseline`` object; None for a scenario not in the baseline."""
        if self.is_new:
            return None
        return {"status": self.old_status, "outcome": self.old_outcome, "score": self.old_score,
                "score_delta": self.score_delta, "turns_delta": self.turns_delta, "tokens_delta": self.tokens_delta,
                "cost_delta_usd": self.cost_delta_usd, "transcript_changed": self.transcript_changed,
                "regressed": self.regressed, "newly_failing": self.newly_failing,
                "newly_passing": self.newly_passing}


@dataclass(frozen=True)
class Baseline:
    """An earlier run's records by node id (first occurrence kept), and where they came from."""

    path: Path
    source: str  # "export" or "recordings"
    records: Mapping[str, ScenarioRecord]
    partial: bool = False  # an export of a run that did not finish
    shown_as: str = ""  # how reports name it (e.g. relative to the invocation directory); default: the path

    @property
    def label(self) -> str:
        return self.shown_as or str(self.path)


@dataclass(frozen=True)
class Comparison:
    """This run compared with a baseline (see the module docstring)."""

    baseline: Baseline
    deltas: list[ScenarioDelta]  # every scenario of this run, in run order
    new: list[str]  # node ids in this run, not in the baseline
    missing: list[str]  # node ids in the baseline, not in this run (informational)
    mean_score_delta: float | None  # over the scenarios scored in both (None: none)
    old_mean_score: float | None = None
    new_mean_score: float | None = None
    scored_in_both: int = 0

    @property
    def baseline_label(self) -> str:
        return self.baseline.label

    def get(self, nodeid: str) -> ScenarioDelta | None:
        for delta in self.deltas:
            if delta.nodeid == nodeid:
                return delta
        return None

    def by_nodeid(self) -> dict[str, ScenarioDelta]:
        return {delta.nodeid: delta for delta in self.deltas}

    def labelled(self, label: str) -> list[ScenarioDelta]:
        return [delta for delta in self.deltas if delta.label == label]

    @property
    def regressed(self) -> list[ScenarioDelta]:
        return self.labelled("regressed")

    @property
    def improved(self) -> list[ScenarioDelta]:
        return self.labelled("improved")

    @property
    def unchanged(self) -> list[ScenarioDelta]:
        return self.labelled("unchanged")

    def counts(self) -> dict[str, int]:
        """How many scenarios are regressed, improved, changed, unchanged, new; and missing from this run."""
        labels = [delta.label for delta in self.deltas]
        counts = {label: labels.count(label) for label in ("regressed", "improved", "changed", "unchanged", "new")}
        counts["missing"] = len(self.missing)
        return counts

    def summary_dict(self) -> dict[str, Any]:
        """The export summary's ``baseline`` block: node ids of the scenarios that regressed, improved, newly
        fail or pass, are new or missing; unchanged ones only counted."""
        return {
            "path": self.baseline_label,
            "source": self.baseline.source,
            "partial": self.baseline.partial,
            "baseline_scenarios": len(self.baseline.records),
            "compared_scenarios": sum(1 for d in self.deltas if not d.is_new),
            "mean_score_delta": self.mean_score_delta,
            "baseline_mean_score": self.old_mean_score,
            "mean_score": self.new_mean_score,
            "scored_in_both": self.scored_in_both,
            "regressed": [d.nodeid for d in self.regressed],
            "improved": [d.nodeid for d in self.improved],
            "newly_failing": [d.nodeid for d in self.deltas if d.newly_failing],
            "newly_passing": [d.nodeid for d in self.deltas if d.newly_passing],
            "changed": [d.nodeid for d in self.labelled("changed")],
            "new": list(self.new),
            "missing": list(self.missing),
            "unchanged": len(self.unchanged),
        }


# -- loading ----------------------------------------------------------------------------------------------------
def load_baseline(path: Path, prices: PriceTable) -> Baseline:
    """The baseline at ``path``: a JSON (or NDJSON) export, or a directory of recordings; ``ConfigError`` with
    one line naming the path and what is wrong."""
    where = f"llmsim_baseline {path}"
    if path.is_dir():
        return _load_recordings(path, prices, where)
    if not path.exists():
        raise ConfigError(f"{where} does not exist; give a JSON export (--llmsim-results run.json) or a recordings "
                          "directory")
    try:
        text = read_bounded(path, MAX_BASELINE_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        what = "a JSON export (--llmsim-results run.json) or a recordings directory"
        raise ConfigError(f"{where} {exc}; give {what}" if not exc.too_large else f"{where} {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text: not a pytest-llmsim JSON export") from None
    if path.suffix.lower() in (".ndjson", ".jsonl"):
        return _load_ndjson(path, text, where)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); give a "
                          "JSON export (--llmsim-results run.json) or a recordings directory") from None
    except (RecursionError, ValueError) as exc:
        raise ConfigError(f"{where} cannot be read ({type(exc).__name__})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise ConfigError(f'{where} is not a pytest-llmsim JSON export (no "results" list); give the file '
                          "--llmsim-results run.json wrote, or a recordings directory")
    summary = document.get("summary")
    if not isinstance(summary, dict):
        summary = {}
    partial = document.get("complete") is False or bool(summary.get("interrupted")) \
        or bool(summary.get("unfinished_scenarios"))
    return Baseline(path, "export", _records(document["results"], where, "results"), partial=partial)


def _load_ndjson(path: Path, text: str, where: str) -> Baseline:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise ConfigError(f"{where} line {number} is not valid JSON: not a pytest-llmsim NDJSON export") from None
    return Baseline(path, "export", _records(rows, where, "line"))


def _records(rows: Sequence[Any], where: str, what: str) -> dict[str, ScenarioRecord]:
    records: dict[str, ScenarioRecord] = {}
    first: dict[str, str] = {}
    for index, row in enumerate(rows):
        name = f"results[{index}]" if what == "results" else f"line {index + 1}"
        if not isinstance(row, dict) or not isinstance(row.get("nodeid"), str) or not row["nodeid"]:
            raise ConfigError(f"{where}: {name} is not a scenario record (no nodeid)")
        if row["nodeid"] in first:  # which of the two verdicts would count is a guess: refuse, never pick one
            raise ConfigError(f"{where}: {name} ({row['nodeid']}): the node id is also {first[row['nodeid']]}'s; "
                              "an export has one row per scenario; give an export pytest-llmsim wrote, as it "
                              "wrote it")
        first[row["nodeid"]] = name
        problem = _row_problem(row)
        if problem is not None:
            raise ConfigError(f"{where}: {name} ({row['nodeid']}): {problem}; give an export pytest-llmsim wrote, "
                              "as it wrote it")
        try:
            record = ScenarioRecord.from_dict(row)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{where}: {name} ({row['nodeid']}) cannot be read: {_one_line(exc)}") from None
        records[record.nodeid] = record
    return records


# The judge's scale: a scenario's score is 1-3 (a mean over trials may be a fraction in between).
SCORE_RANGE = (1, 3)
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cached_completion_tokens",
                 "cached_input_tokens", "replayed_cached_input_tokens", "live_calls", "cached_calls")
_ROW_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "live_tokens", "replayed_tokens")


def _score_problem(value: Any, field_name: str) -> str | None:
    """Why ``value`` is no score on the judge's scale (None: it is one, or no score at all)."""
    if value in (None, ""):
        return None
    low, high = SCORE_RANGE
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        return f"field '{field_name}' is {value!r}, not a score from {low} to {high} or null"
    return None


def _count_problem(value: Any, field_name: str) -> str | None:
    """Why ``value`` is no token or call count (None: a non-negative integer, or absent)."""
    if value is None or (type(value) is int and value >= 0):
        return None
    return f"field '{field_name}' is {value!r}, not a non-negative integer"


def _cost_problem(value: Any, field_name: str) -> str | None:
    """Why ``value`` is no cost in USD (None: a finite non-negative number, or absent)."""
    if value is None or (type(value) in (int, float) and math.isfinite(value) and value >= 0):
        return None
    return f"field '{field_name}' is {value!r}, not a non-negative number of USD"


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """The first value of an export row a comparison would read that is out of range: a score off the judge's
    scale (a baseline score of 99 would make every scenario look regressed), a negative token count, a negative
    or NaN cost (a cost delta of NaN would reach every report)."""
    checks = [_score_problem(row.get(name), name) for name in ("score", "min_score", "mean_score")]
    for key in ("trial_results", "trials"):
        trials = row.get(key)
        for index, trial in enumerate(trials if isinstance(trials, list) else []):
            if isinstance(trial, Mapping):
                checks.append(_score_problem(trial.get("score"), f"{key}[{index}].score"))
    checks += [_count_problem(row.get(name), name) for name in _ROW_COUNTS]
    checks += [_cost_problem(row.get(name), name) for name in ("cost_usd", "saved_cost_usd")]
    usage = row.get("usage")
    for index, entry in enumerate(usage if isinstance(usage, list) else []):
        if isinstance(entry, Mapping):
            checks += [_count_problem(entry.get(name), f"usage[{index}].{name}") for name in _TOKEN_FIELDS]
    return next((problem for problem in checks if problem is not None), None)


def _load_recordings(root: Path, prices: PriceTable, where: str) -> Baseline:
    from pytest_llmsim.replay.recordings import (  # the cache module and diskcache: only when needed
        iter_recordings,
        load_recording,
    )

    records: dict[str, ScenarioRecord] = {}
    for file in iter_recordings(root):
        try:
            result = load_recording(file).to_result()
        except CacheError as exc:
            raise ConfigError(f"{where}: bad recording file: {_one_line(exc)}") from None
        except (TypeError, ValueError, KeyError) as exc:  # checked by load_recording; kept as a safety net
            raise ConfigError(f"{where}: bad recording file {file}: {_one_line(exc)}") from None
        cost = usage_cost([vars(usage) for usage in result.usage], prices)
        record = ScenarioRecord(result=result, outcome=Outcome(result.status.value),
                                cost_usd=round(cost.spent_usd, RECORD_COST_DECIMALS),
                                unpriced_models=cost.unpriced_models)
        records.setdefault(record.nodeid, record)
    if not records:
        raise ConfigError(f"{where} is a directory with no recording files; give a recordings directory (e.g. "
                          "the main branch's recordings/) or a JSON export")
    return Baseline(root, "recordings", records)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- comparing --------------------------------------------------------------------------------------------------
def transcripts_differ(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> bool:
    return [turn_key(t) for t in old] != [turn_key(t) for t in new]


def _tokens(record: ScenarioRecord) -> int:
    return record.result.prompt_tokens + record.result.completion_tokens


def _cost(record: ScenarioRecord) -> float:
    return record.cost_usd + record.saved_cost_usd


def _counts(record: ScenarioRecord) -> bool:
    return record.outcome in COUNTED_OUTCOMES


def _score(record: ScenarioRecord) -> float | int | None:
    """The score compared: a scenario's own, or with trials the mean of its trials' scores (the trial shown
    changes from run to run; the mean is what moved)."""
    return result_score(record.result)


def result_score(result: ScenarioResult) -> float | int | None:
    """``_score`` of a bare result (what an item has before its record exists)."""
    if result.trials:
        return result_stats(result).mean_score
    return result.score


def _delta(new: float | int | None, old: float | int | None) -> float | int | None:
    if new is None or old is None:
        return None
    return round(new - old, STAT_DECIMALS) if isinstance(new - old, float) else new - old


def scenario_delta(new: ScenarioRecord, old: ScenarioRecord | None) -> ScenarioDelta:
    """``new`` compared with its baseline record ``old`` (None: a new scenario)."""
    result = new.result
    common: dict[str, Any] = {"nodeid": new.nodeid, "scenario": new.scenario, "new_status": str(new.status),
                              "new_score": _score(new), "new_transcript": [dict(t) for t in result.transcript],
                              "new_comment": result.comment, "new_outcome": str(new.outcome)}
    if old is None:
        return ScenarioDelta(old_status=None, old_score=None, score_delta=None, newly_failing=False,
                             newly_passing=False, turns_delta=None, tokens_delta=None, cost_delta_usd=None,
                             transcript_changed=False, **common)
    counted = _counts(new)
    ran = Status.SKIPPED not in (old.status, new.status)
    return ScenarioDelta(
        old_status=str(old.status), old_score=_score(old), score_delta=_delta(_score(new), _score(old)),
        newly_failing=counted and old.status == Status.PASSED and new.status in (Status.FAILED, Status.ERROR),
        newly_passing=old.status in (Status.FAILED, Status.ERROR) and new.status == Status.PASSED
        and new.outcome in PASSING_OUTCOMES,
        turns_delta=result.total_turns - old.result.total_turns if ran else None,
        tokens_delta=_tokens(new) - _tokens(old) if ran else None,
        cost_delta_usd=round(_cost(new) - _cost(old), RECORD_COST_DECIMALS) if ran else None,
        transcript_changed=transcripts_differ(old.result.transcript, result.transcript),
        old_transcript=[dict(t) for t in old.result.transcript], old_comment=old.result.comment,
        old_outcome=str(old.outcome), **common)


def compare(records: Iterable[ScenarioRecord | Mapping[str, Any]], baseline: Baseline) -> Comparison:
    """This run's ``records`` (in run order) compared with ``baseline``."""
    rows = as_records(records)
    seen = {r.nodeid for r in rows}
    deltas = [scenario_delta(r, baseline.records.get(r.nodeid)) for r in rows]
    pairs = [(baseline.records[r.nodeid], r) for r in rows if r.nodeid in baseline.records]
    scores = [(_score(old), _score(new)) for old, new in pairs if _counts(old) and _counts(new)]
    scored = [(o, n) for o, n in scores if o is not None and n is not None]
    old_mean = new_mean = mean_delta = None
    if scored:
        old_mean = round(statistics.fmean(o for o, _ in scored), STAT_DECIMALS)
        new_mean = round(statistics.fmean(n for _, n in scored), STAT_DECIMALS)
        mean_delta = round(math.fsum(n - o for o, n in scored) / len(scored), STAT_DECIMALS)
    return Comparison(
        baseline=baseline, deltas=deltas, new=[d.nodeid for d in deltas if d.is_new],
        missing=[nodeid for nodeid in baseline.records if nodeid not in seen], mean_score_delta=mean_delta,
        old_mean_score=old_mean, new_mean_score=new_mean, scored_in_both=len(scored))


# -- gates ------------------------------------------------------------------------------------------------------
def score_arrow(old: float | int | None, new: float | int | None) -> str:
    return f"{'-' if old is None else old} -> {'-' if new is None else new}"


def regression_text(delta: ScenarioDelta) -> str:
    """``a (score 3 -> 1)``, ``b (newly failing)``, ``c (newly failing with an error, score 3 -> -)``."""
    parts = []
    if delta.newly_failing:
        parts.append("newly failing" if delta.new_status == Status.FAILED else "newly failing with an error")
    if (delta.score_delta or 0) < 0 or (delta.old_score is not None and delta.new_score is None):
        parts.append(f"score {score_arrow(delta.old_score, delta.new_score)}")
    return f"{delta.nodeid} ({', '.join(parts)})" if parts else delta.nodeid


def _named(deltas: Sequence[ScenarioDelta]) -> str:
    shown = ", ".join(regression_text(d) for d in deltas[:NAMED_IN_GATE])
    more = len(deltas) - NAMED_IN_GATE
    return shown + (f" and {more} more" if more > 0 else "")


def regression_gates(comparison: Comparison, *, fail_on_regression: bool, max_score_drop: float | None
                     ) -> list[str]:
    """One line per baseline gate the run missed. The caller checks them only for a complete run (as the suite
    gates: ``summary.gates_unchecked_reason``)."""
    missed = []
    regressed = comparison.regressed
    if fail_on_regression and regressed:
        noun = "scenario" if len(regressed) == 1 else "scenarios"
        missed.append(f"{len(regressed)} {noun} regressed since the baseline: {_named(regressed)} "
                      "(llmsim_fail_on_regression)")
    if max_score_drop is not None:
        delta = comparison.mean_score_delta
        tail = f"; regressed: {_named(regressed)}" if regressed else ""
        if delta is not None and -delta > max_score_drop + 1e-9:
            missed.append(f"mean score dropped by {-delta:g} since the baseline ({comparison.old_mean_score:g} -> "
                          f"{comparison.new_mean_score:g} over "
                          f"{plural(comparison.scored_in_both, 'scenario')} scored in both), more than the allowed "
                          f"{max_score_drop:g}{tail} (llmsim_max_score_drop)")
        elif delta is None:
            lost = [d for d in comparison.deltas if d.counted and d.old_score is not None and d.new_score is None]
            if lost:
                missed.append(f"mean score: none of the {len(lost)} scenarios scored in the baseline was scored in "
                              f"this run{tail} (llmsim_max_score_drop)")
    return missed


def run_missed(summary: RunSummary, gates: Gates, comparison: Comparison | None, extra: Sequence[str] = ()
               ) -> list[str]:
    """Every gate the run missed, as the run's reports list them: the suite gates, ``extra`` (gates decided
    elsewhere, e.g. the judge calibration's), then the baseline gates (with a comparison, for a complete run)."""
    missed = missed_gates(summary, gates) + list(extra)
    if comparison is not None and gates_unchecked_reason(summary) is None:
        missed += regression_gates(comparison, fail_on_regression=gates.fail_on_regression,
                                   max_score_drop=gates.max_score_drop)
    return missed


# -- known failures (``llmsim_gate = regressions``) ----------------------------------------------------------------
KNOWN_FAILURE_PREFIX = "known failure on the baseline"
SIGNIFICANT_DROP = 1  # a score drop of at least this many points is a regression, even of a failing scenario


def known_failure_reason(new: ScenarioResult, old: ScenarioRecord | None, baseline_label: str) -> str | None:
    """Why ``new``, a scenario that *failed* in this run, is a known failure; None when it is a failure of this run.

    A known failure failed on the baseline too (status ``failed`` there, whatever pytest's outcome was) and its
    score did not drop significantly: not by ``SIGNIFICANT_DROP`` point or more, and not from at least its
    minimum to below it (with trials, the means of the trials' scores, as everywhere in a comparison), and it did
    not lose the score it had. Never one: an error (now or on the baseline: an error is never hidden), a scenario
    not in the baseline, or one that passed or was skipped there (it newly fails)."""
    if old is None or Status(new.status) != Status.FAILED or old.status != Status.FAILED:
        return None
    old_score, new_score = _score(old), result_score(new)
    if old_score is not None:
        if new_score is None or old_score - new_score >= SIGNIFICANT_DROP - 1e-9:
            return None
        if new.min_score is not None and old_score >= new.min_score > new_score:
            return None
    old_text, new_text = ("-" if score is None else f"{score:g}" for score in (old_score, new_score))
    return f"{KNOWN_FAILURE_PREFIX} ({baseline_label}): failed there too, score {old_text} -> {new_text}"
