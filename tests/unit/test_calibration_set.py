"""The shipped calibration set (``calibration/dev`` and ``calibration/heldout``): loaded with the package's own
loader, counted, and checked to be a stratified, disjoint split. Also the loader's tool calls on agent turns. No LLM
calls: nothing here asks a judge anything."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.config.options import OPTIONS, build_settings, resolve_values
from pytest_llmsim.engine.calibration import (
    CalibrationCase,
    CalibrationError,
    calibration_files,
    check_prompts,
    load_calibration_set,
    load_case,
)
from pytest_llmsim.model.prompts import PACKAGE_TEMPLATES_DIR, PromptRenderer

REPO = Path(__file__).resolve().parent.parent.parent
HALVES = ("dev", "heldout")
DOMAINS = ("shop", "support", "booking")
CYRILLIC = re.compile("[А-Яа-яЁё]")


def load(half: str) -> list[CalibrationCase]:
    return load_calibration_set(REPO / "calibration" / half)


def language(case: CalibrationCase) -> str:
    return "ru" if case.scenario.language == "Russian" else "en"


def domain(case: CalibrationCase) -> str:
    return case.scenario.name.split("_", 1)[0]


@pytest.fixture(scope="module")
def halves() -> dict[str, list[CalibrationCase]]:
    return {half: load(half) for half in HALVES}


@pytest.mark.slow
def test_every_file_of_both_halves_loads_and_says_why(halves: dict[str, list[CalibrationCase]]) -> None:
    for half, cases in halves.items():
        assert len(cases) == len(calibration_files(REPO / "calibration" / half))
        for case in cases:
            where = f"{half}/{case.path.name}"
            assert case.note and "\n" not in case.note, f"{where}: a one-line note says why the person scored it"
            assert case.scenario.name == case.path.stem, f"{where}: the name is the file's stem"
            name_domain, name_language, _ = case.scenario.name.split("_", 2)
            assert name_domain in DOMAINS and name_language == language(case), where
            # The label is not in the name: a judge's template may read the name.
            assert not re.search(r"(^|_)(good|bad|mid|[123])(_|$)", case.scenario.name), where
            assert bool(CYRILLIC.search(case.transcript.as_text())) == (language(case) == "ru"), where
            assert 2 <= len(case.transcript.turns) <= 12, f"{where}: 2-12 turns"
            roles = [t.role for t in case.transcript.turns]
            assert all(a != b for a, b in itertools.pairwise(roles)), f"{where}: turns alternate"
            assert case.scenario.criteria and case.scenario.goal and case.scenario.persona, where
            if domain(case) == "shop":
                assert {"PERSONALITY", "ORDER_GOAL", "LOCATIONS", "DELIVERY_DAYS", "CURRENT_DATE",
                        "PURCHASE_HISTORY"} <= set(case.scenario.variables), where


def test_counts_per_level_language_and_domain(halves: dict[str, list[CalibrationCase]]) -> None:
    every = [case for cases in halves.values() for case in cases]
    per_level = Counter(case.human_score for case in every)
    assert len(every) >= 96 and all(per_level[score] >= 30 for score in (1, 2, 3)), per_level
    assert sum(language(case) == "ru" for case in every) * 3 >= len(every), "at least a third in Russian"
    assert {domain(case) for case in every} == set(DOMAINS)
    for half, cases in halves.items():
        levels = Counter(case.human_score for case in cases)
        assert all(levels[score] >= 15 for score in (1, 2, 3)), (half, levels)
        assert {language(case) for case in cases} == {"en", "ru"}, half
        assert {domain(case) for case in cases} == set(DOMAINS), half
        for score in (1, 2, 3):  # every level in both languages and every domain, in each half
            assert {(domain(c), language(c)) for c in cases if c.human_score == score} == \
                {(d, lang) for d in DOMAINS for lang in ("en", "ru")}, (half, score)
        # Tool calls are no hint of the label either: conversations with them at every level.
        tool_levels = {c.human_score for c in cases if any(t.tool_calls for t in c.transcript.turns)}
        assert tool_levels == {1, 2, 3}, half


def test_the_split_is_disjoint_and_stratified(halves: dict[str, list[CalibrationCase]]) -> None:
    dev, heldout = halves["dev"], halves["heldout"]
    names = [case.scenario.name for case in dev + heldout]
    assert len(names) == len(set(names)), "no name twice, within or across the halves"
    assert not {p.name for p in REPO.joinpath("calibration", "dev").iterdir()} & \
        {p.name for p in REPO.joinpath("calibration", "heldout").iterdir()}
    texts = [case.transcript.as_text() for case in dev + heldout]
    assert len(texts) == len(set(texts)), "no conversation twice"
    strata: dict[tuple[str, str, int], Counter[str]] = {}
    for half, cases in halves.items():
        for case in cases:
            strata.setdefault((domain(case), language(case), case.human_score), Counter())[half] += 1
    for stratum, count in strata.items():
        assert abs(count["dev"] - count["heldout"]) <= 1, (stratum, count)
    assert abs(len(dev) - len(heldout)) <= 1
    assert not REPO.joinpath("calibration", "shop").exists(), "the old set lives in the halves now"


def settings_with_prompts(prompts_dir: Path | None) -> Any:
    ini = {} if prompts_dir is None else {"llmsim_prompts_dir": str(prompts_dir)}
    return build_settings(resolve_values(OPTIONS, cli={}, env={}, ini=ini, invocation_dir=REPO, ini_dir=REPO))


def test_the_generic_judge_renders_every_case_and_the_shop_judge_every_shop_case(
        halves: dict[str, list[CalibrationCase]]) -> None:
    every = [case for cases in halves.values() for case in cases]
    generic = settings_with_prompts(PACKAGE_TEMPLATES_DIR)  # what the README's command uses
    check_prompts(every, generic, PromptRenderer(generic.prompts_dir))
    shop = settings_with_prompts(None)  # the project's prompts/evaluator.j2
    check_prompts([case for case in every if domain(case) == "shop"], shop, PromptRenderer(shop.prompts_dir))


def test_the_judge_sees_the_tool_calls_of_the_shipped_set(halves: dict[str, list[CalibrationCase]]) -> None:
    for cases in halves.values():
        for case in cases:
            calls = [call for turn in case.transcript.turns for call in turn.tool_calls]
            if domain(case) == "shop":
                assert not calls
                continue
            text = case.transcript.as_text()
            for call in calls:
                assert set(call) == {"name", "arguments", "result"}
                assert f"[tool {call['name']}(" in text
    contradicts = next(c for c in halves["dev"] + halves["heldout"] if c.scenario.name == "support_en_contradicts_tool")
    assert '[tool lookup_order({"order_id": "48800"}) -> {"eta": "2025-06-18"' in contradicts.transcript.as_text()


# -- tool calls in a calibration file -----------------------------------------------------------------------------
def write_case(tmp_path: Path, agent_turn: dict[str, Any], client_turn: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({
        "human_score": 1, "note": "contradicts the tool",
        "transcript": [client_turn or {"role": "client", "text": "Where is order 7?"}, agent_turn],
        "ended_by": "agent"}))
    return path


def test_an_agent_turns_tool_calls_reach_the_judges_transcript(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"role": "agent", "text": "It arrives today.", "tool_calls": [
        {"name": "lookup_order", "arguments": {"order_id": "7"}, "result": {"status": "delayed"}},
        {"name": "notify", "arguments": {}}]})
    case = load_case(path)
    assert case.transcript.turns[1].tool_calls == [
        {"name": "lookup_order", "arguments": {"order_id": "7"}, "result": {"status": "delayed"}},
        {"name": "notify", "arguments": {}, "result": None}]
    assert case.transcript.as_text().splitlines()[1] == (
        '  2. Agent: [tool lookup_order({"order_id": "7"}) -> {"status": "delayed"}] [tool notify({})] '
        'It arrives today.')


@pytest.mark.parametrize(("turn", "field", "message"), [
    ({"role": "agent", "text": "ok", "tool_calls": [{"name": "lookup_order", "resutl": {"status": "delayed"}}]},
     "transcript[1].tool_calls[0].resutl", "unknown field; a tool call has 'name', 'arguments' and 'result'"),
    ({"role": "agent", "text": "ok", "tool_calls": [{"name": " ", "result": 1}]},
     "transcript[1].tool_calls[0].name", "must be the tool's name, a non-empty string"),
    ({"role": "agent", "text": "ok", "tool_calls": ["lookup_order"]},
     "transcript[1].tool_calls[0]", "must be an object"),
    ({"role": "agent", "text": "ok", "tool_calls": {"name": "lookup_order"}},
     "transcript[1].tool_calls", "must be a list of"),
])
def test_a_bad_tool_call_names_the_file_and_the_field(tmp_path: Path, turn: dict[str, Any], field: str,
                                                      message: str) -> None:
    path = write_case(tmp_path, turn)
    with pytest.raises(CalibrationError, match=re.escape(f"x.json: field {field!r}: {message}")):
        load_case(path)


def test_a_customer_turn_makes_no_tool_calls(tmp_path: Path) -> None:
    client = {"role": "client", "text": "Where is order 7?", "tool_calls": [{"name": "lookup_order"}]}
    path = write_case(tmp_path, {"role": "agent", "text": "Checking."}, client)
    with pytest.raises(CalibrationError, match=re.escape("x.json: field 'transcript[0].tool_calls': only an agent "
                                                         "turn makes tool calls")):
        load_case(path)
    client["tool_calls"] = []  # what a chat file (--llmsim-chats-dir) writes for every turn
    path = write_case(tmp_path, {"role": "agent", "text": "Checking."}, client)
    assert load_case(path).transcript.turns[0].tool_calls == []


def test_the_second_labelling_pass_covers_every_file_and_agrees_as_the_readme_says() -> None:
    """``second_pass.json`` labels every file of both halves; the agreement, kappa and disagreements that
    ``calibration/README.md`` quotes are recomputed from the files (a relabelled file must update the README)."""
    second = json.loads((REPO / "calibration" / "second_pass.json").read_text(encoding="utf-8"))
    files = {f"{half}/{path.name}": path for half in HALVES for path in calibration_files(REPO / "calibration" / half)}
    assert set(second) == set(files)
    pairs = {name: (load_case(path).human_score, second[name]["score"]) for name, path in files.items()}
    assert all(second[name]["reason"].strip() for name in second)
    agreed = sum(first == other for first, other in pairs.values())
    first_counts = Counter(first for first, _ in pairs.values())
    second_counts = Counter(other for _, other in pairs.values())
    expected = sum(first_counts[s] * second_counts[s] for s in (1, 2, 3)) / len(pairs) ** 2
    kappa = (agreed / len(pairs) - expected) / (1 - expected)
    readme = (REPO / "calibration" / "README.md").read_text(encoding="utf-8")
    assert f"agree on **{agreed} of {len(pairs)} ({agreed / len(pairs):.1%}; Cohen's kappa {kappa:.2f})**" in readme
    for name, (first, other) in pairs.items():
        if first != other:
            assert f"| `{name}` | {first} | {other} |" in readme, name
