"""How the xdist window scheduler shares items out: even contiguous shares, stealing only into idle slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmsim.plugin.xdist import Journal, journal_path, pick_items, read_in_flight, split_evenly


@pytest.mark.parametrize(("count", "nodes", "sizes"), [(200, 2, [100, 100]), (7, 3, [3, 2, 2]), (1, 2, [1, 0])])
def test_split_evenly_gives_contiguous_shares_differing_by_at_most_one(count: int, nodes: int,
                                                                        sizes: list[int]) -> None:
    names = [f"gw{i}" for i in range(nodes)]
    owner = split_evenly(count, names)
    assert [sum(1 for node in owner.values() if node == name) for name in names] == sizes
    assert [owner[index] for index in range(count)] == sorted(owner.values(), key=names.index)


def test_own_share_comes_first_in_order() -> None:
    owner = split_evenly(10, ["a", "b"])
    assert pick_items(list(range(10)), owner, "b", {"a", "b"}, stealable_from={"a"}, own_count=3,
                      steal_count=2) == [5, 6, 7]


def test_no_stealing_while_the_thief_has_no_idle_slot() -> None:
    owner = split_evenly(10, ["a", "b"])
    pending = [1, 2, 3, 4]  # a's share only: b's own share is all sent
    assert pick_items(pending, owner, "b", {"a", "b"}, stealable_from={"a"}, own_count=4, steal_count=0) == []


def test_no_stealing_from_a_worker_whose_queue_has_room() -> None:
    """At the first fill the other worker has not been served yet: its share is not up for grabs."""
    owner = split_evenly(4, ["a", "b"])
    assert pick_items([0, 1, 2, 3], owner, "a", {"a", "b"}, stealable_from=set(), own_count=9,
                      steal_count=4) == [0, 1]


def test_idle_worker_steals_from_the_end_of_the_largest_share() -> None:
    owner = split_evenly(12, ["a", "b", "c"])  # a: 0-3, b: 4-7, c: 8-11
    pending = [3, 5, 6, 7]
    live = {"a", "b", "c"}
    assert pick_items(pending, owner, "c", live, stealable_from=live, own_count=5, steal_count=2) == [7, 6]
    assert pick_items(pending, owner, "c", live, stealable_from=live, own_count=5, steal_count=4) == [7, 6, 3, 5]
    assert pick_items(pending, owner, "c", live, stealable_from={"a"}, own_count=5, steal_count=4) == [3]


def test_a_crashed_workers_items_go_to_anyone_before_stealing() -> None:
    owner = split_evenly(6, ["a", "b", "dead"])  # dead's items 4 and 5 were re-queued
    pending = [1, 4, 5]
    assert pick_items(pending, owner, "b", {"a", "b"}, stealable_from={"a"}, own_count=2, steal_count=0) == [4, 5]
    assert pick_items(pending, owner, "b", {"a", "b"}, stealable_from={"a"}, own_count=3,
                      steal_count=3) == [4, 5, 1]


def test_the_in_flight_journal_counts_starts_and_ends(tmp_path: Path) -> None:
    """What a dead worker had in flight: started and not ended, a re-run item counted once per start."""
    journal = Journal(journal_path(tmp_path, "gw0"))
    for sign, nodeid in [("+", "s.json::a"), ("+", "s.json::b"), ("-", "s.json::a"), ("+", "s.json::c"),
                         ("+", "s.json::a"), ("-", "s.json::c")]:
        journal.write(sign, nodeid)
    assert read_in_flight(journal_path(tmp_path, "gw0")) == {"s.json::a", "s.json::b"}
    assert read_in_flight(journal_path(tmp_path, "gw9")) == set()
    journal.close()
    assert not journal_path(tmp_path, "gw0").exists()  # a worker that ends normally leaves nothing
