"""The judging method (issue 26, parts 2 and 3): how the judge turns a transcript into a score, and the honesty
of its measurement: the held-out half of the calibration set (``calibration/heldout``) is never read by the code
or the prompts that build the judge's requests, so its figures are a measurement, not a fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "calibration" / "heldout"
# What builds a judge's (or any role's) request: the package's code and templates, and the project's prompts.
PROMPT_SOURCES = [p for p in [*(REPO / "pytest_llmsim").rglob("*"), *(REPO / "prompts").rglob("*")]
                  if p.is_file() and p.suffix in (".py", ".j2", ".json", ".yaml", ".yml", ".txt", ".md")]


def _heldout_passages() -> list[tuple[str, str]]:
    """(file, passage) for every passage of the held-out conversations a prompt could copy: each turn's text and
    the note, cut into sentences of at least 25 characters, whitespace and case normalised."""
    passages = []
    for path in sorted(HELDOUT.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        texts = [turn["text"] for turn in data["transcript"]] + [data.get("note") or ""]
        for text in texts:
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                normal = " ".join(sentence.lower().split())
                if len(normal) >= 25:
                    passages.append((path.name, normal))
    return passages


def test_the_heldout_half_exists_and_is_what_the_guard_reads() -> None:
    passages = _heldout_passages()
    assert len(list(HELDOUT.glob("*.json"))) == 48 and len(passages) > 200  # a guard over nothing guards nothing
    assert PROMPT_SOURCES and any(p.name == "evaluator.j2" for p in PROMPT_SOURCES)


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8", errors="replace") for p in PROMPT_SOURCES}


def _naming(sources: dict[str, str]) -> list[str]:
    return [name for name, text in sources.items() if re.search(r"held[-_ ]?out", text, re.IGNORECASE)]


def _copies(sources: dict[str, str]) -> list[tuple[str, str, str]]:
    normal = {name: " ".join(text.lower().split()) for name, text in sources.items()}
    return [(name, file, passage) for file, passage in _heldout_passages()
            for name, text in normal.items() if passage in text]


def test_no_code_or_prompt_names_the_heldout_half() -> None:
    """Nothing under pytest_llmsim/ or prompts/ refers to the held-out folder: no code path can load it for a
    prompt, a few-shot example or a tuned threshold (the README and calibration/README.md describe it)."""
    assert _naming(_sources()) == []


def test_no_prompt_source_contains_text_of_a_heldout_conversation() -> None:
    """The templates, the prompt builders and any worked examples hold no sentence of a held-out conversation
    (a turn or its label's note)."""
    assert _copies(_sources()) == []


def test_the_guard_finds_a_planted_copy() -> None:
    """The checks above can fail: a held-out sentence pasted into a template, or a path to the folder in code,
    is found."""
    file, passage = _heldout_passages()[0]
    planted = {"t.j2": f"Example conversation:\n  {passage.upper()}\nScore: 1",
               "m.py": "EXAMPLES = Path('calibration') / 'heldout'"}
    assert (planted["t.j2"].startswith("Example") and ("t.j2", file, passage) in _copies(planted))
    assert _naming(planted) == ["m.py"]
