"""CI shards merged into one run (no pytest): ``llmsim merge shard-*.json`` (``apps/cli/merge.py``) over the JSON
exports that ``--llmsim-shard=K/N --llmsim-results shard-K.json`` wrote.

A shard's export carries, besides its records and summary, an ``llmsim_shard`` object (``plugin.shards``): its
``index`` and ``count``, the ``commit`` (``GITHUB_SHA`` or ``git rev-parse HEAD``; null when unknown), the
``settings`` that can change a verdict (``options.verdict_settings``: models, templates, seeds, trials, record mode,
gates, baseline ...), the ``baseline`` it compared with (its label and a digest of its records), the whole
collection's size and digest, each item it ran with its place in the whole collection (``items``), pytest's exit
status from its items' outcomes alone (``exit_status``), the gates other plugins decided (``extra_missed``: the
judge calibration's) and its raw rate-limit figures.

``check_shards`` refuses, with one error naming what differs, a set of exports that is not one run: shards of
different splits, a shard missing or given twice, different commits, settings, baselines or collections, a shard
that did not finish, or items run by two shards or by none. ``merge_shards`` then rebuilds what the single run would
have had: every record in the whole collection's order under one run id, the summary from ``summary.summarize``
(plus the known failures, the local judge and the rate-limit figures added up), the comparison with the baseline
(``baseline.compare``), the missed gates (``baseline.run_missed``: the same suite and baseline gates pytest checks)
and pytest's exit status. Nothing here re-implements a gate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmsim.errors import ConfigError
from pytest_llmsim.history.compare import DEFAULT_ALPHA, RunComparison, compare_runs, significant_regressions
from pytest_llmsim.model.results import Outcome, ScenarioRecord
from pytest_llmsim.reporting.baseline import Baseline, Comparison, compare, run_missed
from pytest_llmsim.reporting.summary import Gates, RunSummary, gates_unchecked_reason, plural, summarize
from pytest_llmsim.safe_files import UnreadableFile, read_bounded

SHARD_FIELD = "llmsim_shard"
MAX_EXPORT_BYTES = 256 * 2**20
TESTS_FAILED, USAGE_ERROR, NO_TESTS_COLLECTED = 1, 4, 5  # pytest's exit codes a merged run can end with
_GATE_FIELDS = tuple(f.name for f in dataclasses.fields(Gates))
_NAMED = 5  # node ids named in an error before "and N more"


def baseline_digest(baseline: Baseline) -> str:
    """A digest of a baseline's records (as priced): the shards and the merge must compare with the same one."""
    rows = [baseline.records[nodeid].to_dict() for nodeid in sorted(baseline.records)]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def baseline_identity(baseline: Baseline) -> dict[str, Any]:
    """The shard export's ``baseline``: how the reports name it, where it came from, its digest."""
    return {"label": baseline.label, "source": baseline.source, "partial": baseline.partial,
            "digest": baseline_digest(baseline)}


@dataclass(frozen=True)
class ShardExport:
    """One shard's JSON export, read and checked for the fields a merge needs."""

    path: Path
    document: dict[str, Any]

    @property
    def block(self) -> dict[str, Any]:
        block: dict[str, Any] = self.document[SHARD_FIELD]
        return block

    @property
    def index(self) -> int:
        return int(self.block["index"])

    @property
    def count(self) -> int:
        return int(self.block["count"])

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count} ({self.path})"

    @property
    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.document["summary"]
        return summary


def load_shard_export(path: Path) -> ShardExport:
    """The shard export at ``path``; ConfigError naming the file and what is wrong."""
    try:
        text = read_bounded(path, MAX_EXPORT_BYTES).decode("utf-8")
        document = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnreadableFile) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a JSON export ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list) \
            or not isinstance(document.get("summary"), dict):
        raise ConfigError(f'{path}: not a pytest-llmsim JSON export (no "results" list and "summary"); give the '
                          "files --llmsim-results shard-K.json wrote")
    block = document.get(SHARD_FIELD)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: not a shard's export (no {SHARD_FIELD!r} object): run each shard with "
                          "--llmsim-shard=K/N --llmsim-results shard-K.json")
    needed = {"index": int, "count": int, "settings": dict, "items": dict, "exit_status": int,
              "collected": int, "collection_digest": str}
    for name, kind in needed.items():
        if not isinstance(block.get(name), kind) or isinstance(block.get(name), bool):
            raise ConfigError(f"{path}: {SHARD_FIELD}.{name} is missing or not a {kind.__name__}: the export is "
                              "damaged or from another version; rerun the shard")
    collected = block["collected"]
    for nodeid, position in block["items"].items():
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < collected:
            raise ConfigError(f"{path}: {SHARD_FIELD}.items gives {nodeid!r} the place {_value(position)[:40]}, not "
                              f"a place among the {collected} collected items: the export is damaged or was edited; "
                              "rerun the shard")
    return ShardExport(path, document)


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _differs(exports: Sequence[ShardExport], what: str, value_of: Any) -> str | None:
    """``what`` differs between the shards: one line naming each shard's value, None when they agree."""
    values = [value_of(export) for export in exports]
    if all(value == values[0] for value in values):
        return None
    groups: dict[str, list[str]] = {}
    for export, value in zip(exports, values, strict=True):
        groups.setdefault(_value(value), []).append(f"{export.index}/{export.count}")
    parts = [f"{text} in shard{'s' if len(names) > 1 else ''} {', '.join(names)}" for text, names in groups.items()]
    return f"{what}: {'; '.join(parts)}"


def check_shards(exports: Sequence[ShardExport]) -> None:
    """ConfigError naming what differs when ``exports`` are not the shards of one run (see the module docstring)."""
    if not exports:
        raise ConfigError("no shard exports given")
    counts = {export.count for export in exports}
    if len(counts) > 1:
        raise ConfigError("the exports are shards of different splits: "
                          + ", ".join(f"{e.path} is shard {e.index}/{e.count}" for e in exports))
    count = counts.pop()
    seen: dict[int, ShardExport] = {}
    for export in exports:
        if export.index in seen:
            raise ConfigError(f"shard {export.index}/{count} is given twice: {seen[export.index].path} and "
                              f"{export.path}")
        seen[export.index] = export
    missing = [index for index in range(1, count + 1) if index not in seen]
    if missing:
        given = ", ".join(f"{e.index}/{count} ({e.path})" for e in sorted(exports, key=lambda e: e.index))
        raise ConfigError(f"{'shard' if len(missing) == 1 else 'shards'} {', '.join(f'{i}/{count}' for i in missing)} "
                          f"missing (given: {given}); a merge of some shards is no verdict")
    ordered = sorted(exports, key=lambda e: e.index)
    problem = _differs(ordered, "the shards ran different commits", lambda e: e.block.get("commit"))
    if problem is None:
        problem = _settings_problem(ordered)
    if problem is None:
        problem = _differs(ordered, "the shards compared with different baselines", lambda e: e.block.get("baseline"))
    if problem is None:
        problem = _differs(ordered, "the shards collected different suites (collected items, digest)",
                           lambda e: [e.block["collected"], e.block["collection_digest"][:12]])
    if problem is None:
        problem = _differs(ordered, "the shards' other gates differ (extra_missed)",
                           lambda e: e.block.get("extra_missed") or [])
    if problem is None:
        problem = _differs(ordered, "the shards' judge calibrations differ", lambda e: e.document.get("calibration"))
    if problem is not None:
        raise ConfigError(problem)
    for export in ordered:
        _check_finished(export)
        _check_gates(export)
    _check_partition(ordered)


# Each gate of a shard's summary and the setting it comes from (``plugin.report_options.gates_from_config``).
_GATE_SETTINGS = {"min_mean_score": "llmsim_min_mean_score", "min_pass_rate": "llmsim_min_pass_rate",
                  "max_cost_usd": "llmsim_max_cost_usd", "fail_on_regression": "llmsim_fail_on_regression",
                  "max_score_drop": "llmsim_max_score_drop", "min_pass_hat_k": "llmsim_min_pass_hat_k",
                  "gate": "llmsim_gate", "significant_regression_alpha": "llmsim_fail_on_significant_regression"}
_BASELINE_GATES = {"fail_on_regression": False, "max_score_drop": None, "significant_regression_alpha": None}


def _check_gates(export: ShardExport) -> None:
    """The gates of a shard's summary (which the merge checks) are those its settings set: a gate dropped from the
    summary alone would pass a run the single run fails."""
    recorded = export.summary.get("gates")
    recorded = recorded if isinstance(recorded, dict) else {}
    settings = export.block["settings"]
    expected = {name: settings.get(key) for name, key in _GATE_SETTINGS.items()}
    expected["fail_on_regression"] = bool(expected["fail_on_regression"])
    if export.block.get("baseline") is None:  # no baseline: the shard dropped its baseline gates, as pytest does
        expected.update(_BASELINE_GATES)
    differ = [f"{name}: {_value(recorded.get(name))} in its summary, {_value(value)} in its settings"
              for name, value in expected.items() if recorded.get(name) != value]
    if differ:
        raise ConfigError(f"{export.label}: its summary's gates are not those its settings set "
                          f"({'; '.join(differ)}): the export is damaged or was edited; rerun that shard")


def _settings_problem(exports: Sequence[ShardExport]) -> str | None:
    keys = list(dict.fromkeys(key for export in exports for key in export.block["settings"]))
    lines = [line for key in keys
             if (line := _differs(exports, key, lambda e, key=key: e.block["settings"].get(key))) is not None]
    if not lines:
        return None
    return "the shards ran with different settings: " + " | ".join(lines)


def _check_finished(export: ShardExport) -> None:
    summary = export.summary
    if export.document.get("complete") is False or summary.get("interrupted") or summary.get("unfinished_scenarios"):
        unfinished = summary.get("unfinished_scenarios") or 0
        why = ("it was interrupted" if summary.get("interrupted")
               else f"{plural(int(unfinished), 'scenario')} did not finish")
        raise ConfigError(f"{export.label} is a partial run ({why}); rerun that shard: a merge of a partial shard is "
                          "no verdict")
    status = export.block["exit_status"]
    if status not in (0, TESTS_FAILED, NO_TESTS_COLLECTED):
        raise ConfigError(f"{export.label} ended with pytest exit status {status} (not a test outcome: interrupted, "
                          "internal or usage error); rerun that shard")


def _check_partition(exports: Sequence[ShardExport]) -> None:
    """Every collected item ran in exactly one shard."""
    owner: dict[str, int] = {}
    positions: dict[int, str] = {}
    twice: list[str] = []
    for export in exports:
        for nodeid, position in export.block["items"].items():
            if nodeid in owner:
                twice.append(f"{nodeid} (shards {owner[nodeid]} and {export.index})")
            owner[nodeid] = export.index
            positions[int(position)] = nodeid
    if twice:
        raise ConfigError(f"{plural(len(twice), 'item')} ran in two shards: {_named(twice)}; the shards split the "
                          "suite differently (their recordings differ?): rerun them on the same checkout")
    collected = exports[0].block["collected"]
    if len(positions) != collected or set(positions) != set(range(collected)):
        raise ConfigError(f"{collected - len(owner)} of {plural(collected, 'collected item')} ran in no shard: the "
                          "shards split the suite differently (their recordings differ?): rerun them on the same "
                          "checkout")


@dataclass
class MergedRun:
    """The single run the shards make up (``merge_shards``)."""

    run_id: str
    records: list[ScenarioRecord]
    summary: RunSummary
    gates: Gates
    missed: list[str]
    comparison: Comparison | None
    exit_status: int
    statistics: RunComparison | None = None  # the comparison's statistics (``history.compare``), as pytest's
    backend: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    merged_from: list[dict[str, Any]] = field(default_factory=list)


def shard_gates(exports: Sequence[ShardExport], overrides: Mapping[str, Any] | None = None) -> Gates:
    """The gates the shards were configured with (their summaries' ``gates``), ``overrides`` (the merge's own
    flags, None values left out) on top."""
    recorded = exports[0].summary.get("gates")
    values = {name: recorded[name] for name in _GATE_FIELDS if isinstance(recorded, dict) and name in recorded}
    values.update({name: value for name, value in (overrides or {}).items() if value is not None})
    return Gates(**values)


def merge_shards(exports: Sequence[ShardExport], *, baseline: Baseline | None = None,
                 gate_overrides: Mapping[str, Any] | None = None, run_id: str | None = None) -> MergedRun:
    """The shards (checked with ``check_shards``) as one run: records in the whole collection's order, the
    summary, the comparison with ``baseline``, the gates (``shard_gates``), what was missed and pytest's exit
    status."""
    from pytest_llmsim.llm.rate_limits import merge_stats, throughput_fields
    from pytest_llmsim.reporting.terminal import backend_messages

    check_shards(exports)
    ordered = sorted(exports, key=lambda e: e.index)
    run_id = run_id or str(uuid.uuid4())
    places: dict[str, int] = {}
    for export in ordered:
        places.update({nodeid: int(position) for nodeid, position in export.block["items"].items()})
    last = len(places)

    def place(nodeid: str) -> int:  # a test's later fixture conversations (``<nodeid>[llmsim-N]``) follow it
        return places.get(nodeid, places.get(nodeid.rpartition("[llmsim-")[0], last))

    rows: list[tuple[int, int, int, ScenarioRecord]] = []
    for export in ordered:
        for number, row in enumerate(export.document["results"]):
            if not isinstance(row, dict):
                raise ConfigError(f"{export.path}: result #{number} is not an object")
            try:
                record = ScenarioRecord.from_dict(row)
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"{export.path}: result #{number} cannot be read: {exc}") from None
            if record.nodeid not in export.block["items"] \
                    and record.nodeid.rpartition("[llmsim-")[0] not in export.block["items"]:
                raise ConfigError(f"{export.label} holds a result for {record.nodeid}, an item it did not run "
                                  f"(not in its {SHARD_FIELD}.items): the export is damaged or was edited; rerun "
                                  "that shard")
            rows.append((place(record.nodeid), export.index, number, dataclasses.replace(record, run_id=run_id)))
    records = [record for *_, record in sorted(rows, key=lambda row: row[:3])]
    known_set = {nodeid for export in ordered for nodeid in export.summary.get("known_failures") or []}
    stats = merge_stats(export.block.get("rate_limits") for export in ordered)
    known = [r.nodeid for r in records if r.nodeid in known_set]
    summary = dataclasses.replace(summarize(records), known_failures=known,
                                  local_judge=_local_judge(ordered, records), **throughput_fields(stats))
    notes: list[str] = []
    gates = shard_gates(ordered, gate_overrides)
    if baseline is None and gates.baseline_gates:
        notes.append("baseline gates (llmsim_fail_on_regression, llmsim_max_score_drop) not checked: no baseline "
                     "given (--baseline)")
        gates = dataclasses.replace(gates, fail_on_regression=False, max_score_drop=None)
    comparison = compare(records, baseline) if baseline is not None else None
    statistics = None if baseline is None else compare_runs(
        baseline.records.values(), records, old_label=baseline.label, new_label="this run",
        alpha=gates.significant_regression_alpha if gates.significant_regression_alpha is not None else DEFAULT_ALPHA)
    extra = list(ordered[0].block.get("extra_missed") or [])
    missed = run_missed(summary, gates, comparison, extra)
    if (statistics is not None and gates.significant_regression_alpha is not None
            and gates_unchecked_reason(summary) is None):
        missed += significant_regressions(statistics)
    backend = backend_messages(records)
    statuses = [export.block["exit_status"] for export in ordered]
    if sum(export.block["collected"] for export in ordered) == 0:
        status = NO_TESTS_COLLECTED
    else:
        status = TESTS_FAILED if TESTS_FAILED in statuses else 0
    if any(record.outcome in (Outcome.FAILED, Outcome.ERROR) for record in records):
        status = TESTS_FAILED  # whatever a shard's exit status says: a failed record is a failed run
    if backend:
        status = USAGE_ERROR
    elif missed and status == 0:
        status = TESTS_FAILED
    calibration = ordered[0].document.get("calibration")
    return MergedRun(run_id=run_id, records=records, summary=summary, gates=gates, missed=missed,
                     comparison=comparison, statistics=statistics, exit_status=status, backend=backend,
                     notes=notes,
                     calibration=calibration if isinstance(calibration, dict) else None,
                     merged_from=[{"file": str(e.path), "shard": f"{e.index}/{e.count}",
                                   "run_id": e.document.get("run_id"), "commit": e.block.get("commit")}
                                  for e in ordered])


def _local_judge(exports: Sequence[ShardExport], records: Sequence[ScenarioRecord]) -> dict[str, Any] | None:
    """``RunSummary.local_judge`` of the whole run (as ``report_options.local_judge`` decides it over every record):
    the shards' when the judge is local, unless every verdict came from another model."""
    from pytest_llmsim.llm.local_model import LOCAL_MODEL_NAME

    judges: list[dict[str, Any]] = [e.summary["local_judge"] for e in exports
                                    if isinstance(e.summary.get("local_judge"), dict)]
    if not judges:
        return None
    models = {usage.model for record in records for usage in record.result.usage if usage.role == "evaluator"}
    if models and LOCAL_MODEL_NAME not in models:
        return None
    return judges[0]
