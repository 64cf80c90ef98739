"""pytest collection of recorded conversations (``llmsim_transcripts``): one item per conversation, scored by the
metrics without a simulation (``transcripts.py``).

The items are scenario items carrying their conversation (``TranscriptItem.transcript``, put into the job by the
session), so the run-ahead, xdist, reports, exports, HTML and JUnit treat them like any scenario. A file (or a
conversation) that cannot be scored is an error item naming the file, line and field; the others still run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.errors import ScenarioError
from pytest_llmsim.plugin.items import INVALID_FILE_ITEM, ScenarioItem

if TYPE_CHECKING:
    from pytest_llmsim.model.transcript import Transcript

INI = "llmsim_transcripts"


def is_transcript_path(config: pytest.Config, file_path: Path) -> bool:
    """A .json/.jsonl file, or a transcript's sidecar (``*.meta.yaml``...), under ``llmsim_transcripts``."""
    from pytest_llmsim.plugin.session import SESSION_KEY

    patterns = [p.strip().strip("/") for p in config.stash[SESSION_KEY].options[INI] if p.strip().strip("/")]
    if not patterns:  # the default: no transcripts, and no engine import for a plain suite
        return False
    from pytest_llmsim.engine.transcripts import SIDECAR_SUFFIXES, TRANSCRIPT_SUFFIXES

    if not file_path.name.endswith(TRANSCRIPT_SUFFIXES + SIDECAR_SUFFIXES):
        return False
    try:
        rel = file_path.resolve().relative_to(config.rootpath.resolve()).as_posix()
    except ValueError:
        return False
    return any(fnmatch.fnmatch(rel, p) if any(ch in p for ch in "*?[") else
               p == "." or rel == p or rel.startswith(p + "/") for p in patterns)


def transcript_collector(parent: pytest.Collector, file_path: Path) -> TranscriptFile | None:
    """The collector of a path ``is_transcript_path`` accepted; None for a sidecar (read with its transcript)."""
    from pytest_llmsim.engine.transcripts import is_transcript_file

    return TranscriptFile.from_parent(parent, path=file_path) if is_transcript_file(file_path) else None


class TranscriptFile(pytest.File):
    def collect(self) -> Iterator[TranscriptItem]:
        from pytest_llmsim.engine.transcripts import load_transcript_file
        from pytest_llmsim.plugin.session import SESSION_KEY

        try:
            entries = load_transcript_file(self.path, self.config.stash[SESSION_KEY].options["llmsim_evaluate"]
                                           or ("judge",))
        except ScenarioError as exc:
            yield TranscriptItem.from_parent(self, name=INVALID_FILE_ITEM, scenario=None, problem=str(exc))
            return
        except Exception as exc:  # one bad file never stops the run, even on a bug of ours
            problem = (f"{self.path}: cannot load transcript file: {type(exc).__name__}: {str(exc)[:300]} "
                       "(please report this as a pytest-llmsim bug, with the file)")
            yield TranscriptItem.from_parent(self, name=INVALID_FILE_ITEM, scenario=None, problem=problem)
            return
        for entry in entries:
            yield TranscriptItem.from_parent(self, name=entry.item_name, scenario=entry.scenario,
                                             problem=entry.problem, transcript=entry.transcript)


class TranscriptItem(ScenarioItem):
    """A recorded conversation: a scenario item whose job scores ``transcript`` instead of simulating one."""

    def __init__(self, *, transcript: Transcript | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcript = transcript

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"recorded conversation: {self.name}"
