"""The shard split (``model.shards``): deterministic, stable when scenarios are added (few others move) and
balanced (the largest shard's cost at most 1.2x the mean) on the shipped benchmark suite, by count and by the
recorded conversations' tokens (``replay.recordings.recorded_tokens``)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from pytest_llmsim.model.scenario import load_scenario_file
from pytest_llmsim.model.shards import assign, key_costs, parse_shard, shard_key, shard_loads
from pytest_llmsim.replay.recordings import recorded_tokens, recording_path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_nodeids(tmp_path: Path, scenarios: int) -> list[str]:
    """The node ids of the benchmark suite (``benchmarks/_harness.make_suite``), as pytest collects them."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _harness import make_suite
    finally:
        sys.path.remove(str(BENCHMARKS))
    root = make_suite(tmp_path / "suite", scenarios)
    path = root / "scenarios" / "bench.json"
    return [f"scenarios/bench.json::{entry.item_name}" for entry in load_scenario_file(path)]


def write_recordings(root: Path, nodeids: list[str], seed: int = 7) -> dict[str, int]:
    """A recording per scenario whose calls hold log-normally spread token counts (conversations of different
    lengths), as ``--llmsim-record`` writes them (only the calls' usage matters to the split)."""
    rng = random.Random(seed)
    tokens = {}
    for nodeid in nodeids:
        calls = [{"usage": {"prompt_tokens": int(rng.lognormvariate(5.5, 0.5)), "completion_tokens": 40}}
                 for _ in range(rng.randint(3, 25))]
        path = recording_path(root, nodeid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"llmsim_recording": 1, "nodeid": nodeid, "calls": calls}))
        tokens[nodeid] = sum(c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"] for c in calls)
    return tokens


def recorded_costs(root: Path, nodeids: list[str]) -> tuple[dict[str, float], str]:
    recorded = {nodeid: float(tokens) for nodeid in nodeids if (tokens := recorded_tokens(root, nodeid))}
    return key_costs(nodeids, recorded)


@pytest.mark.parametrize(("text", "index", "count"), [("1/1", 1, 1), ("2/4", 2, 4), (" 4/4 ", 4, 4)])
def test_parse_shard(text: str, index: int, count: int) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count, str(shard)) == (index, count, f"{index}/{count}")


@pytest.mark.parametrize("text", ["0/4", "5/4", "x", "2", "1/0", "-1/4", "a/b", "1/4/2", "1/1001", "1/1000000000"])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be K/N"):
        parse_shard(text)


def test_trials_of_a_scenario_share_its_key() -> None:
    assert shard_key("s.json::a[trial-2]") == "s.json::a"
    assert shard_key("s.json::a") == "s.json::a"
    assert shard_key("t.py::test[x-1]") == "t.py::test[x-1]"


def test_recorded_tokens_adds_every_call_and_every_trials_recording(tmp_path: Path) -> None:
    first = recording_path(tmp_path, "s.json::a")
    first.parent.mkdir(parents=True)
    first.write_text(json.dumps({"calls": [{"usage": {"prompt_tokens": 10, "completion_tokens": 5}},
                                           {"usage": {"prompt_tokens": 7, "completion_tokens": True}}]}))
    recording_path(tmp_path, "s.json::a", 2).write_text(json.dumps({"calls": [{"usage": {"prompt_tokens": 3}}]}))
    recording_path(tmp_path, "s.json::b").write_text("{not json")
    assert recorded_tokens(tmp_path, "s.json::a") == 25
    assert recorded_tokens(tmp_path, "s.json::b") is None  # its replay reports it; the split takes the median
    assert recorded_tokens(tmp_path, "s.json::c") is None
    costs, basis = key_costs(["s.json::a", "s.json::b", "s.json::c"], {"s.json::a": 25.0})
    assert (costs, basis) == ({"s.json::a": 25.0, "s.json::b": 25.0, "s.json::c": 25.0}, "recorded tokens")
    assert key_costs(["x", "y"], {}) == ({"x": 1.0, "y": 1.0}, "count")


def test_the_split_is_a_partition_whatever_order_the_keys_come_in(tmp_path: Path) -> None:
    nodeids = benchmark_nodeids(tmp_path, 200)
    costs, _ = recorded_costs(tmp_path / "recordings", nodeids)
    placed = assign(nodeids, costs, 4)
    assert set(placed) == set(nodeids) and set(placed.values()) == {0, 1, 2, 3}
    shuffled = nodeids[:]
    random.Random(1).shuffle(shuffled)
    assert assign(shuffled, costs, 4) == placed  # every shard computes the same split
    assert set(assign(nodeids, costs, 1).values()) == {0}


@pytest.mark.parametrize("scenarios", [100, 1000])
@pytest.mark.parametrize("shards", [2, 3, 4, 8])
@pytest.mark.parametrize("by", ["count", "recorded tokens"])
def test_balance_on_the_benchmark_suite(tmp_path: Path, scenarios: int, shards: int, by: str) -> None:
    nodeids = benchmark_nodeids(tmp_path, scenarios)
    if by == "recorded tokens":
        write_recordings(tmp_path / "recordings", nodeids)
    costs, basis = recorded_costs(tmp_path / "recordings", nodeids)
    assert basis == by
    loads = shard_loads(assign(nodeids, costs, shards), costs, shards)
    mean = sum(loads) / shards
    assert max(loads) <= 1.2 * mean, (loads, mean)


@pytest.mark.parametrize("scenarios", [100, 1000])
@pytest.mark.parametrize("by", ["count", "recorded tokens"])
def test_adding_a_scenario_moves_few_others(tmp_path: Path, scenarios: int, by: str) -> None:
    """Add each of 20 new scenarios to the benchmark suite in turn, and remove 20 of its scenarios in turn: on
    average at most 2 others change shard (by count: at most 1), never more than 6."""
    nodeids = benchmark_nodeids(tmp_path, scenarios)
    extra = [f"scenarios/bench.json::new_{i}" for i in range(20)]
    root = tmp_path / "recordings"
    if by == "recorded tokens":
        write_recordings(root, nodeids + extra)
    costs, _ = recorded_costs(root, nodeids + extra)
    before = assign(nodeids, costs, 4)
    moved = []
    for new in extra:
        after = assign([*nodeids, new], costs, 4)
        moved.append(sum(1 for nodeid in nodeids if after[nodeid] != before[nodeid]))
        removed = assign([n for n in nodeids if n != nodeids[len(moved)]], costs, 4)  # and removing one
        moved.append(sum(1 for nodeid, shard in removed.items() if shard != before[nodeid]))
    assert sum(moved) / len(moved) <= (1.0 if by == "count" else 2.0) and max(moved) <= 6, moved
