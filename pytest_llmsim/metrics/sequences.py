"""Matching what was expected against what happened, in order or not (no pytest): the four match modes shared
by the agent-selection metric (``expected_agents``) and the tool-call checks (``rules: {tool_called, tool_match}``).

* ``exact``: what happened is the expected sequence, item for item, nothing before, between or after;
* ``in_order``: the expected items happened in that order, other items may come between them;
* ``any_order``: the expected items happened, in any order, and nothing else (as many times as listed);
* ``subset``: each expected item happened at least once; anything else may happen too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MATCH_MODES", "Mismatch", "first_mismatch"]

from pytest_llmsim.model.scenario import MATCH_MODES

E = TypeVar("E")
A = TypeVar("A")


@dataclass(frozen=True)
class Mismatch:
    """The first place where what happened leaves what was expected.

    ``kind``: ``wrong`` (``actual`` index holds something other than ``expected`` index), ``missing`` (the
    ``expected`` item never happened at its place; ``actual`` is where it was looked for, may be past the end),
    ``unexpected`` (``actual`` index is more than was expected)."""

    kind: str
    expected: int | None
    actual: int | None


@dataclass(frozen=True)
class _Match(Generic[E, A]):
    expected: Sequence[E]
    actual: Sequence[A]
    matches: Callable[[E, A], bool]


def first_mismatch(expected: Sequence[E], actual: Sequence[A], matches: Callable[[E, A], bool],
                   mode: str) -> Mismatch | None:
    """Where ``actual`` fails ``expected`` under ``mode`` (``MATCH_MODES``), or None when it matches."""
    match = _Match(expected, actual, matches)
    if mode == "exact":
        return _exact(match)
    if mode == "in_order":
        return _in_order(match)
    if mode == "any_order":
        return _any_order(match)
    if mode == "subset":
        return _subset(match)
    raise ValueError(f"unknown match mode {mode!r}; one of {', '.join(MATCH_MODES)}")


def _exact(m: _Match[E, A]) -> Mismatch | None:
    for i, (want, got) in enumerate(zip(m.expected, m.actual, strict=False)):
        if not m.matches(want, got):
            return Mismatch("wrong", i, i)
    if len(m.actual) < len(m.expected):
        return Mismatch("missing", len(m.actual), len(m.actual))
    if len(m.actual) > len(m.expected):
        return Mismatch("unexpected", None, len(m.expected))
    return None


def _in_order(m: _Match[E, A]) -> Mismatch | None:
    position = 0
    for i, want in enumerate(m.expected):
        while position < len(m.actual) and not m.matches(want, m.actual[position]):
            position += 1
        if position == len(m.actual):
            # Not found after the previous match: name the first thing that happened there instead, if any.
            after = _after_previous(m, i)
            return Mismatch("wrong" if after < len(m.actual) else "missing", i, after)
        position += 1
    return None


def _after_previous(m: _Match[E, A], index: int) -> int:
    """The index in ``actual`` just after the match of expected item ``index - 1`` (0 for the first)."""
    position = 0
    for want in m.expected[:index]:
        while not m.matches(want, m.actual[position]):
            position += 1
        position += 1
    return position


def _any_order(m: _Match[E, A]) -> Mismatch | None:
    left = list(range(len(m.expected)))
    for j, got in enumerate(m.actual):
        found = next((i for i in left if m.matches(m.expected[i], got)), None)
        if found is None:
            return Mismatch("unexpected", None, j)
        left.remove(found)
    if left:
        return Mismatch("missing", left[0], None)
    return None


def _subset(m: _Match[E, A]) -> Mismatch | None:
    for i, want in enumerate(m.expected):
        if not any(m.matches(want, got) for got in m.actual):
            return Mismatch("missing", i, None)
    return None
