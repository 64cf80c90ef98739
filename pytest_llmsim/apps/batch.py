"""Batches of scenarios outside pytest: the engine of the ``llmsim`` command and of the service (no pytest).

A batch is a list of ``BatchItem``s (a scenario file's slots, or scenarios sent to the API). ``run_batch`` feeds
them to a ``BatchRunner`` (the pytest runner plus per-job callbacks) through a bounded window, so a 10 000-scenario
batch never holds more than a window of conversations, and hands each finished scenario to ``on_result`` as a
``ScenarioRecord`` made exactly as the pytest plugin makes it: the same result, the outcome pytest would report
(skip, xfail and scenario errors included) and the same cost. ``summarize`` over those records therefore gives the
numbers pytest prints for the same scenarios and seeds.

Several batches may share one ``BatchRunner``: they then share its concurrency limit and its 429 limiter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmsim.config import options
from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.engine.conversation import ON_TURN
from pytest_llmsim.engine.runner import Runner, ScenarioJob, run_job
from pytest_llmsim.errors import BackendMissingError, ErrorKind
from pytest_llmsim.llm.pricing import PriceTable, scenario_cost
from pytest_llmsim.model.results import ERROR, FAILED, PASSED, Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.model.scenario import Scenario, load_scenario_file
from pytest_llmsim.model.settings import RunSettings
from pytest_llmsim.model.transcript import Turn
from pytest_llmsim.reporting.summary import Gates, make_record

StartHook = Callable[["BatchItem"], None]
ResultHook = Callable[["BatchItem", ScenarioRecord], None]


@dataclass(frozen=True)
class BatchItem:
    """One scenario slot of a batch: a valid ``scenario`` or a ``problem`` (one line naming file, scenario, field)."""

    index: int
    name: str
    nodeid: str
    source: str
    scenario: Scenario | None
    problem: str | None = None


def items_from_file(path: Path, rootdir: Path) -> list[BatchItem]:
    """The slots of a scenario file, with the node ids pytest gives them (``scenarios/x.json::name``), so that
    recordings and records are shared with pytest runs. ScenarioError when the whole file is unusable."""
    try:
        shown = path.resolve().relative_to(rootdir.resolve()).as_posix()
    except ValueError:
        shown = path.as_posix()
    return [BatchItem(entry.index, entry.item_name, f"{shown}::{entry.item_name}", str(path), entry.scenario,
                      entry.problem)
            for entry in load_scenario_file(path)]


def items_from_scenarios(scenarios: Sequence[Scenario], batch_id: str) -> list[BatchItem]:
    """Slots of scenarios sent to the service (validated already); node ids name the batch."""
    return [BatchItem(index, scenario.name, f"batch-{batch_id}::{scenario.name}", "", scenario)
            for index, scenario in enumerate(scenarios)]


def outcome_of(item: BatchItem, result: ScenarioResult) -> Outcome:
    """The outcome pytest reports for this scenario's item (``items.ScenarioItem``): a skip marker skips, an
    xfail turns a low score into xfailed and a pass into xpassed, an error stays an error."""
    if result.status == Status.SKIPPED:
        return Outcome.SKIPPED
    if result.status == ERROR:
        return Outcome.ERROR
    xfail = item.scenario is not None and bool(item.scenario.xfail)
    if result.status == FAILED:
        return Outcome.XFAILED if xfail else Outcome.FAILED
    return Outcome.XPASSED if xfail else Outcome.PASSED


def unrun_result(item: BatchItem) -> ScenarioResult | None:
    """The result of a slot that is not simulated (a problem, or a skip), as the collector records it; None for
    a slot to run."""
    if item.problem is not None or item.scenario is None:
        return ScenarioResult(scenario=item.name, nodeid=item.nodeid, source=item.source, status=ERROR,
                              min_score=None, error_kind=ErrorKind.SCENARIO,
                              error_message=item.problem or f"{item.nodeid}: not a scenario")
    if item.scenario.skip:
        reason = item.scenario.skip if isinstance(item.scenario.skip, str) else "skipped by the scenario file"
        return ScenarioResult(scenario=item.name, nodeid=item.nodeid, source=item.source, status=Status.SKIPPED,
                              min_score=None, comment=reason)
    return None


def record_of(item: BatchItem, result: ScenarioResult, prices: PriceTable, run_id: str) -> ScenarioRecord:
    """The run record, exactly as ``collector.RecordCollector`` makes it for pytest."""
    cost = scenario_cost({"usage": [vars(u) for u in result.usage]}, prices)
    return make_record(result, cost, run_id=run_id, outcome=outcome_of(item, result))


def gates_of(resolved: ResolvedOptions) -> Gates:
    """The suite gates (the baseline gates need a baseline, which a batch does not take)."""
    return Gates(min_mean_score=resolved["llmsim_min_mean_score"], min_pass_rate=resolved["llmsim_min_pass_rate"],
                 max_cost_usd=resolved["llmsim_max_cost_usd"], min_pass_hat_k=resolved["llmsim_min_pass_hat_k"])


def secret_scrubber(resolved: ResolvedOptions) -> Callable[[str], str]:
    """The function removing the API key, URL credentials and the suite agent's secrets (``llmsim_agent``: an
    openai agent's key, an http agent's header values) from a text (logs, responses). Scenario agents' secrets
    are scrubbed by the engine from every reply and record before anything is logged."""
    from pytest_llmsim.agents.specs import parse_agent_spec
    from pytest_llmsim.errors import ConfigError
    from pytest_llmsim.llm.scrubbing import RunSecrets
    from pytest_llmsim.model.settings import EndpointSettings

    secrets = RunSecrets(EndpointSettings(base_url=resolved["llmsim_base_url"] or None,
                                          api_key=options.api_key(resolved.values)))
    try:
        secrets.add_spec(parse_agent_spec(str(resolved["llmsim_agent"] or "")))
    except (ConfigError, KeyError):
        pass  # reported where the settings are built
    return secrets.scrub


def local_settings(resolved: ResolvedOptions, rootdir: Path, state_dir: Path, owner_pid: int, *,
                   log: Callable[[str], None]) -> RunSettings:
    """The settings of a run without an endpoint: the local GGUF model (``llmsim_local_model``, else the bundled
    one) serves every role; its server starts on the first uncached call (a replay starts no model) and is shared
    by the processes that use ``state_dir`` (pytest's xdist workers)."""
    from pytest_llmsim.llm import local_model

    configured: Path | None = resolved["llmsim_local_model"]
    model_path = configured if configured is not None else local_model.find_bundled_model()

    def connect() -> str:
        if not local_model.local_backend_available():
            raise BackendMissingError(local_model.missing_backend_message())
        if model_path is None or not model_path.is_file():
            raise BackendMissingError(f"local model {model_path or '(bundled SmolLM2)'} not found; "
                                      + local_model.missing_backend_message())
        return local_model.ensure_local_server(model_path, state_dir, owner_pid, log=log).base_url

    name = model_path.name if model_path is not None else "missing-model"
    settings = options.build_settings(resolved, rootdir=rootdir, endpoint_id=f"local:{name}",
                                      default_model=local_model.LOCAL_MODEL_NAME, connect=connect,
                                      description=f"local model {model_path}")
    thresholds = settings.logprob_thresholds or local_model.judge_thresholds(name)
    return dataclasses.replace(settings, local_engine=local_model.server_engine(), logprob_thresholds=thresholds)


def engine_settings(resolved: ResolvedOptions, rootdir: Path, *, log: Callable[[str], None] = lambda line: None,
                    recordings: bool = True) -> RunSettings:
    """The engine's settings, as pytest builds them. Without an endpoint the local model serves every role and
    starts on the first uncached call (``session.LlmsimSession._local_settings``); ``recordings`` False turns
    the readable recordings off (the service: a request must not make files in a repository)."""
    if not resolved.local:
        settings = options.build_settings(resolved, rootdir=rootdir)
    else:
        state_dir = Path(tempfile.gettempdir()) / f"pytest-llmsim-{os.getpid()}"
        settings = local_settings(resolved, rootdir, state_dir, os.getpid(), log=log)
    return settings if recordings else dataclasses.replace(settings, recordings_dir=None)


def stop_local_model() -> None:
    """Stop the local model server this process started, if any (front ends call it when they exit)."""
    state_dir = Path(tempfile.gettempdir()) / f"pytest-llmsim-{os.getpid()}"
    if state_dir.exists():
        from pytest_llmsim.llm import local_model

        local_model.stop_local_server(state_dir)


class _AnnouncingSlots:
    """The runner's semaphore, calling ``on_start`` once a conversation holds a slot (each trial is one)."""

    def __init__(self, slots: asyncio.Semaphore, on_start: Callable[[], None]) -> None:
        self._slots = slots
        self._on_start = on_start

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        self._on_start()

    async def __aexit__(self, *exc: object) -> None:
        self._slots.release()


class BatchRunner(Runner):
    """The pytest runner with per-job hooks: ``on_start`` when a conversation starts, ``on_turn`` per turn."""

    def submit_with(self, job: ScenarioJob, *, on_start: Callable[[], None] | None = None,
                    on_turn: Callable[[Turn], None] | None = None) -> concurrent.futures.Future[ScenarioResult]:
        if self._closed:
            raise RuntimeError("runner is closed")
        return self._schedule(self._run_with(job, on_start, on_turn), job)

    async def _run_with(self, job: ScenarioJob, on_start: Callable[[], None] | None,
                        on_turn: Callable[[Turn], None] | None) -> ScenarioResult:
        if on_turn is not None:
            ON_TURN.set(on_turn)  # this task's context only (each job runs in its own task)
        slots: Any = self._slots if on_start is None else _AnnouncingSlots(self._slots, on_start)
        return await run_job(job, self.settings, self.client, self.renderer, self.agents, slots)


def run_batch(
    runner: BatchRunner, items: Iterable[BatchItem], *, prices: PriceTable, run_id: str,
    on_result: ResultHook, on_start: StartHook | None = None, on_turn: Callable[[Turn], None] | None = None,
    cancel: threading.Event | None = None, window: int | None = None,
) -> bool:
    """Run ``items`` (in order, at most ``window`` in flight; default twice the concurrency) and call
    ``on_result`` in this thread for each finished one. Returns False when ``cancel`` stopped the batch (the
    unfinished conversations are cancelled and give no record)."""
    cancel = cancel or threading.Event()
    limit = window or 2 * runner.settings.concurrency
    finished: queue.SimpleQueue[tuple[BatchItem, concurrent.futures.Future[ScenarioResult]]] = queue.SimpleQueue()
    in_flight: dict[int, concurrent.futures.Future[ScenarioResult]] = {}
    pending = iter(items)
    exhausted = False
    while True:
        while not exhausted and not cancel.is_set() and len(in_flight) < limit:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            unrun = unrun_result(item)
            if unrun is not None:
                on_result(item, record_of(item, unrun, prices, run_id))
                continue
            assert item.scenario is not None
            job = ScenarioJob(item.nodeid, item.source, item.scenario)
            start = (lambda item=item: on_start(item)) if on_start is not None else None
            future = runner.submit_with(job, on_start=start, on_turn=on_turn)
            in_flight[item.index] = future

            def done(f: concurrent.futures.Future[ScenarioResult], item: BatchItem = item) -> None:
                finished.put((item, f))
            future.add_done_callback(done)
        if not in_flight:
            return not cancel.is_set()
        try:
            item, future = finished.get(timeout=0.2)
        except queue.Empty:
            if cancel.is_set():
                for future in in_flight.values():
                    future.cancel()
            continue
        del in_flight[item.index]
        if future.cancelled():
            continue
        error = future.exception()
        if error is not None:  # run_job keeps a scenario's own trouble in its result: this is a bug of ours
            result = ScenarioResult(scenario=item.name, nodeid=item.nodeid, source=item.source, status=ERROR,
                                    min_score=None, error_kind=ErrorKind.INTERNAL,
                                    error_message=f"{item.nodeid}: internal error {type(error).__name__}: {error}")
        else:
            result = future.result()
        on_result(item, record_of(item, result, prices, run_id))


def exit_status(records: Sequence[ScenarioRecord], missed: Sequence[str]) -> int:
    """0 when every counted scenario passed and no gate was missed, else 1 (the ``llmsim run`` exit code)."""
    bad = {Outcome.FAILED, Outcome.ERROR}
    return 1 if missed or any(record.outcome in bad for record in records) else 0


def passed_share(outcomes: Mapping[str, int]) -> float | None:
    """Pass rate so far from outcome counts (the progress bar's), as ``summarize`` computes it."""
    passing = outcomes.get(PASSED, 0) + outcomes.get(Outcome.XPASSED, 0)
    counted = passing + outcomes.get(FAILED, 0) + outcomes.get(Outcome.ERROR, 0)
    return passing / counted if counted else None
