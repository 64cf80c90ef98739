"""Hand-edited shard exports: ``llmsim merge`` never turns an edit into a pass. A shard whose exit status says 0
while its records failed, a shard whose summary dropped a gate its settings set, a shard holding a result for an
item another shard ran, and a damaged ``items`` map each give the failing verdict or one clear error (exit 2)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from conftest import SimProject, scenario
from pytest_llmsim.apps.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def shards(sim: SimProject) -> dict[int, dict[str, Any]]:
    """Two shard exports of a suite whose one failure (low_one) is in the shard that ran it."""
    sim.write_scenarios("shop.json", [scenario(f"good_{i}") for i in range(4)] + [scenario("low_one")])
    sim.write_ini(llmsim_min_mean_score="2.5")
    assert sim.run("--llmsim-record=once").ret == 1
    exports = {}
    for k in (1, 2):
        sim.run("--llmsim-record=none", f"--llmsim-shard={k}/2", f"--llmsim-results=s{k}.json",
                f"--llmsim-cache-dir=cache_{k}")
        exports[k] = json.loads((sim.path / f"s{k}.json").read_text())
    return exports


def merged(sim: SimProject, exports: dict[int, dict[str, Any]], capsys: pytest.CaptureFixture[str]
           ) -> tuple[int, str]:
    names = []
    for k, document in exports.items():
        path = sim.path / f"edited-{k}.json"
        path.write_text(json.dumps(document))
        names.append(str(path))
    capsys.readouterr()
    code = main(["merge", *names, "--quiet"])
    return code, capsys.readouterr().err


def failing_shard(exports: dict[int, dict[str, Any]]) -> int:
    return next(k for k, d in exports.items() if any(r["scenario"] == "low_one" for r in d["results"]))


def test_the_untouched_shards_merge_to_the_failure(sim: SimProject, shards: dict[int, dict[str, Any]],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert merged(sim, shards, capsys)[0] == 1


def test_an_exit_status_edited_to_0_does_not_hide_a_failed_record(
        sim: SimProject, shards: dict[int, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    edited = copy.deepcopy(shards)
    edited[failing_shard(edited)]["llmsim_shard"]["exit_status"] = 0
    assert merged(sim, edited, capsys)[0] == 1


def test_a_gate_removed_from_a_shards_summary_is_refused(
        sim: SimProject, shards: dict[int, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    edited = copy.deepcopy(shards)
    for document in edited.values():
        document["summary"]["gates"]["min_mean_score"] = None
    code, err = merged(sim, edited, capsys)
    assert code == 2
    assert "shard 1/2" in err and "min_mean_score" in err and "its settings" in err


def test_a_result_for_an_item_the_shard_did_not_run_is_refused(
        sim: SimProject, shards: dict[int, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    """Shard A drops its failed record and shard B carries a passing one for that item."""
    edited = copy.deepcopy(shards)
    owner = failing_shard(edited)
    other = 3 - owner
    row = next(r for r in edited[owner]["results"] if r["scenario"] == "low_one")
    edited[owner]["results"].remove(row)
    edited[owner]["llmsim_shard"]["exit_status"] = 0
    row = dict(row, status="passed", outcome="passed", score=3)
    edited[other]["results"].append(row)
    code, err = merged(sim, edited, capsys)
    assert code == 2
    assert f"shard {other}/2" in err and "scenarios/shop.json::low_one" in err and "did not run" in err


@pytest.mark.parametrize("position", ["first", -1, True, 10**9])
def test_a_damaged_items_map_is_one_clear_error(
        sim: SimProject, shards: dict[int, dict[str, Any]], capsys: pytest.CaptureFixture[str],
        position: Any) -> None:
    edited = copy.deepcopy(shards)
    items = edited[1]["llmsim_shard"]["items"]
    items[next(iter(items))] = position
    code, err = merged(sim, edited, capsys)
    assert code == 2
    assert "llmsim_shard.items" in err and "edited-1.json" in err


