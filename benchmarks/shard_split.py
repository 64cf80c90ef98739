"""The shard split (``--llmsim-shard``, ``model.shards``): how balanced, and how many other scenarios move when one
is added, for suites of 40, 100 and 1 000 scenarios in 4 shards, by count and by recorded tokens spread like real
conversations (3 to 25 calls of log-normal size); against the favourites alone (plain rendezvous hashing).

    python benchmarks/shard_split.py [--suites 10] [--added 10] [--shards 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable, Mapping

from pytest_llmsim.model.shards import assign, preferences, shard_loads

Split = Callable[[list[str], Mapping[str, float], int], dict[str, int]]


def favourites(keys: list[str], costs: Mapping[str, float], count: int) -> dict[str, int]:
    return {key: preferences(key, count)[0] for key in keys}


def measure(split: Split, scenarios: int, by: str, suites: int, added: int, shards: int) -> tuple[float, int, float]:
    """Mean and max other scenarios moved per added one, and the largest shard's cost over the mean (worst)."""
    rng = random.Random(3)
    moves: list[int] = []
    ratios: list[float] = []
    for suite in range(suites):
        keys = [f"scenarios/bench.json::s{suite}_{i:05d}" for i in range(scenarios)]
        every = keys + [f"scenarios/bench.json::new{suite}_{i}" for i in range(added)]
        costs = {key: 1.0 if by == "count" else float(sum(int(rng.lognormvariate(5.5, 0.5)) + 40
                                                          for _ in range(rng.randint(3, 25)))) for key in every}
        before = split(keys, costs, shards)
        loads = shard_loads(before, costs, shards)
        ratios.append(max(loads) / (sum(loads) / shards))
        for new in every[scenarios:]:
            after = split([*keys, new], costs, shards)
            moves.append(sum(1 for key in keys if after[key] != before[key]))
    return statistics.mean(moves), max(moves), max(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", type=int, default=10)
    parser.add_argument("--added", type=int, default=10)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.shards} shards, {args.suites} suites per row, {args.added} scenarios added one at a time to each")
    print(f"{'split':<11} {'scenarios':>9} {'cost by':<16} {'moved mean':>10} {'max':>4} {'largest/mean':>12}")
    for name, split in (("llmsim", assign), ("favourites", favourites)):
        for scenarios in (40, 100, 1000):
            for by in ("count", "recorded tokens"):
                mean, worst, ratio = measure(split, scenarios, by, args.suites, args.added, args.shards)
                print(f"{name:<11} {scenarios:>9} {by:<16} {mean:>10.2f} {worst:>4} {ratio:>12.3f}")


if __name__ == "__main__":
    main()
