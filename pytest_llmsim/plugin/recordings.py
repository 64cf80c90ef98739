"""The pytest front of recordings: which recordings no collected scenario uses, ``--llmsim-prune``, and the
terminal line saying what was recorded.

Unused recordings are found where collection happens (the only process, or each xdist worker: the controller
collects nothing), from every collected item *before* deselection (``-k``, ``-m``), so a recording of a
deselected scenario is not unused. A worker sends its list to the controller in ``workeroutput``; the
controller prints it and prunes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.model.results import ScenarioRecord

_WORKER_KEY = "llmsim_unused_recordings"
_SHOWN = 20


class RecordingInventory:
    name = "llmsim-recordings"

    def __init__(self, config: pytest.Config, root: Path, rootdir: Path, *,
                 records: Callable[[], Sequence[ScenarioRecord]]) -> None:
        """``records``: the run's records at session end (the report plugin's; none in an xdist worker)."""
        self.config = config
        self.records = records
        self.root = root
        self.rootdir = rootdir
        self.expected: set[Path] = set()
        self.collected_files: set[str] = set()
        self.broken_files: set[str] = set()
        self.unused: list[Path] | None = None  # None: not known (collection did not finish)
        self.pruned = 0
        self.prune_error = ""

    # -- where collection happens --
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        from pytest_llmsim.plugin.items import INVALID_FILE_ITEM, ScenarioItem

        if isinstance(item, ScenarioItem):
            from pytest_llmsim.replay.recordings import recording_path

            source = item.nodeid.partition("::")[0]
            if item.name == INVALID_FILE_ITEM:  # the file did not parse: none of its recordings is unused
                self.broken_files.add(source)
            trial = getattr(item, "trial", 0)
            if trial:  # one item per trial: the scenario's trial recording
                self.expected.add(recording_path(self.root, item.nodeid.removesuffix(f"[trial-{trial}]"), trial))
            else:
                for n in range(1, self._trials(item) + 1):
                    self.expected.add(recording_path(self.root, item.nodeid, n))
            self.collected_files.add(source)

    def _trials(self, item: Any) -> int:
        """The trials this run makes of ``item``'s scenario (each has its own recording)."""
        if item.scenario is None:
            return 1
        from pytest_llmsim.plugin.session import SESSION_KEY

        own: int | None = item.scenario.trials
        if own is not None:
            return own
        trials: int = self.config.stash[SESSION_KEY].options["llmsim_trials"]
        return trials

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.broken_files.add(report.nodeid.partition("::")[0])

    def _narrowed_files(self) -> set[str]:
        """Files the command line names with a test id (``file::name``): only some of their scenarios were
        collected, so the others' recordings are not unused."""
        narrowed = set()
        for arg in self.config.args:
            file_part, sep, _ = arg.partition("::")
            if not sep:
                continue
            path = Path(file_part)
            path = path if path.is_absolute() else self.config.invocation_params.dir / path
            try:
                narrowed.add(path.resolve().relative_to(self.rootdir.resolve()).as_posix())
            except ValueError:
                continue
        return narrowed

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.shouldfail or session.shouldstop:
            return
        self.broken_files |= self._narrowed_files()  # treated like files that did not collect: left alone
        if not self.root.is_dir():  # nothing recorded (and a plain test suite imports no engine module)
            self.unused = []
        else:
            from pytest_llmsim.replay.recordings import unused_recordings

            self.unused = unused_recordings(self.root, self.rootdir, expected=self.expected,
                                            collected_files=self.collected_files, broken_files=self.broken_files)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[_WORKER_KEY] = [str(path) for path in self.unused]

    # -- the controller of an xdist run --
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        listed = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if self.unused is None and isinstance(listed, list):
            self.unused = [Path(path) for path in listed]

    # -- session end (controller) --
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput") or not self.config.getoption("llmsim_prune", False):
            return
        if self.unused is None or session.exitstatus == pytest.ExitCode.INTERRUPTED:
            self.prune_error = "not pruned: the run did not finish collecting" if self.unused is None else \
                "not pruned: the run was interrupted"
            return
        from pytest_llmsim.replay.recordings import prune

        try:
            self.pruned = prune(self.unused, self.root)
        except OSError as exc:
            self.prune_error = f"pruning failed: {exc}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or self.config.getoption("collectonly", default=False):
            return
        write = terminalreporter.write_line
        states = recording_states(self.records())
        if states:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()) if not state.startswith("not "))
            if counts:
                write(f"llmsim recordings in {self._shown(self.root)}: {counts}")
            for state, n in sorted(states.items()):
                if state.startswith("not "):
                    write(f"llmsim: {n} recording(s) {state}", red=True)
        from pytest_llmsim.replay.recordings import changed_conversations

        changed = changed_conversations(list(self.records()))
        if changed is not None:  # record mode changed: what a pull request's reviewer needs to know
            write(f"llmsim --llmsim-record=changed: {changed.text()}", red=bool(changed.unjudged),
                  yellow=bool(changed.judged) and not changed.unjudged)
        if self.prune_error:
            write(f"llmsim: --llmsim-prune: {self.prune_error}", yellow=True)
        if self.pruned:
            write(f"llmsim: pruned {self.pruned} unused recording(s) from {self._shown(self.root)}")
        elif self.unused:
            write(f"llmsim: {len(self.unused)} recording(s) unused by any collected scenario "
                  "(--llmsim-prune deletes them):", yellow=True)
            for path in self.unused[:_SHOWN]:
                write(f"  {self._shown(path)}", yellow=True)
            if len(self.unused) > _SHOWN:
                write(f"  ... and {len(self.unused) - _SHOWN} more", yellow=True)

    def _shown(self, path: Path) -> str:
        try:
            return path.relative_to(self.rootdir).as_posix()
        except ValueError:
            return str(path)


def recording_states(records: Sequence[ScenarioRecord]) -> dict[str, int]:
    """How many recordings (one per scenario, or per trial) were written, unchanged, replayed or not written, from
    the run's records."""
    states: dict[str, int] = {}
    for record in records:
        trials = record.result.trials or [{"recording_state": record.result.recording_state}]
        for trial in trials:  # each trial of a scenario has its own recording
            state = str(trial.get("recording_state") or "")
            if state:
                state = "not written" + state.removeprefix("not written") if state.startswith("not written") else state
                states[state] = states.get(state, 0) + 1
    return states
