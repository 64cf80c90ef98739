"""Splitting a suite across CI jobs (``--llmsim-shard=K/N``): which shard runs which scenario (pure, no I/O).

The split is by *key*: a scenario item's node id without its ``[trial-N]`` suffix (every trial of a scenario runs
in the same shard), a Python test's node id otherwise. Every shard computes the whole split from the same collected
keys and costs and keeps its own part, so the N shards partition the suite with no coordination.

The algorithm is rendezvous hashing with bounded loads:

* each key ranks the N shards by ``hash(key, shard)`` (its own preference order, independent of every other key)
  and first goes to its favourite;
* the capacity is ``(1 + SLACK) * total / N`` (never less than the largest key's cost); a shard above it sheds keys,
  those with the weakest claim first (lowest ``hash(key, "claim")``), until it is within it;
* the shed keys, larger costs first (by power-of-two cost class, so that a re-recorded conversation whose cost
  changes a little keeps its place) then by ``hash(key)``, go to the next shard of their preference order with room
  (the least loaded when none has).

So every shard's cost is at most the capacity (1.1x the mean) unless one key alone is larger, and a key moves only
when its favourite sheds it: adding or removing a scenario moves the scenario itself, at most the keys its
favourite sheds because of it, and a shed key whose next choice lost its room. ``benchmarks/shard_split.py``
measures it (4 shards, 10 suites each, 10 scenarios added one at a time): mean (max) other scenarios moved per
added one, by count: 0.43 (1) of 40, 0.47 (1) of 100, 0.01 (1) of 1 000; by recorded tokens spread like real
conversations (3-25 calls): 1.2 (6), 0.9 (4), 0.2 (2). Largest shard: at most 1.1x the mean in every case; the
favourites alone (plain rendezvous hashing, which moves no other scenario) leave the largest shard at up to 1.7x
the mean of 40 scenarios, 1.4x of 100, 1.13x of 1 000.

Costs are the recorded conversations' tokens (``replay.recordings.recorded_tokens``) when recordings exist, a key
without one counting the median of those that have one; 1 per key (a split by count) when none has.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SLACK = 0.1  # a shard's capacity: the mean cost plus this share of it
MAX_SHARDS = 1000  # the split ranks every shard for every key: a typo's billion shards would hang collection
TRIAL_SUFFIX = "[trial-"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``K/N`` (1 <= K <= N) as a Shard; ValueError saying what is wrong."""
    index_text, sep, count_text = text.strip().partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index = count = 0
    if not sep or count < 1:
        raise ValueError(f"must be K/N with whole numbers, shard K of N (e.g. 2/4), got {text!r}")
    if not 1 <= index <= count:
        raise ValueError(f"must be K/N with 1 <= K <= N (shards are numbered from 1), got {text!r}")
    if count > MAX_SHARDS:
        raise ValueError(f"must be K/N with N at most {MAX_SHARDS} (one CI job per shard), got {text!r}")
    return Shard(index, count)


def shard_key(nodeid: str) -> str:
    """The key a node id is split by: a trial item's scenario (``a.json::x[trial-2]`` -> ``a.json::x``)."""
    base, sep, tail = nodeid.rpartition(TRIAL_SUFFIX)
    if sep and tail.endswith("]") and tail[:-1].isdigit():
        return base
    return nodeid


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def preferences(key: str, count: int) -> list[int]:
    """The shards (0-based) in ``key``'s rendezvous order: highest ``hash(key, shard)`` first."""
    return sorted(range(count), key=lambda shard: (-_hash(f"{key}\0{shard}"), shard))


def _cost_class(cost: float) -> int:
    return math.frexp(cost)[1] if cost > 0 else -10_000


def assign(keys: Iterable[str], costs: Mapping[str, float], count: int) -> dict[str, int]:
    """Each key's shard (0-based) among ``count`` shards (see the module docstring); a key missing from ``costs``
    costs 1. The result does not depend on the order of ``keys``."""
    unique = sorted(dict.fromkeys(keys))
    cost = {key: max(0.0, float(costs.get(key, 1.0))) for key in unique}
    if count <= 1:
        return dict.fromkeys(unique, 0)
    capacity = max((1 + SLACK) * math.fsum(cost.values()) / count, max(cost.values(), default=0.0))
    ranked = {key: preferences(key, count) for key in unique}
    placed = {key: ranked[key][0] for key in unique}
    loads = [0.0] * count
    for key in unique:
        loads[placed[key]] += cost[key]
    shed: list[str] = []
    for shard in range(count):
        members = sorted((key for key in unique if placed[key] == shard), key=lambda k: (_hash(f"{k}\0claim"), k))
        for key in members:
            if loads[shard] <= capacity + 1e-9:
                break
            loads[shard] -= cost[key]
            shed.append(key)
    for key in sorted(shed, key=lambda k: (-_cost_class(cost[k]), _hash(k), k)):
        order = ranked[key][1:] + ranked[key][:1]
        room = next((s for s in order if loads[s] + cost[key] <= capacity + 1e-9), None)
        # none with room: the least loaded (ties: the key's preference order; min keeps the first)
        target = room if room is not None else min(order, key=lambda s: loads[s])
        loads[target] += cost[key]
        placed[key] = target
    return placed


def key_costs(keys: Sequence[str], recorded: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """Each key's cost and what the split balances: ``recorded tokens`` (a key without a recording counts the
    median of those that have one) or ``count`` (no key has a recording)."""
    known = [recorded[key] for key in keys if recorded.get(key)]
    if not known:
        return dict.fromkeys(keys, 1.0), "count"
    fallback = float(statistics.median(known))
    return {key: float(recorded.get(key) or fallback) for key in keys}, "recorded tokens"


def shard_loads(assignment: Mapping[str, int], costs: Mapping[str, float], count: int) -> list[float]:
    """Each shard's total cost under ``assignment``."""
    loads = [0.0] * count
    for key, shard in assignment.items():
        loads[shard] += costs.get(key, 1.0)
    return loads
