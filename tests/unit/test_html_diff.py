"""The side-by-side baseline diff of the pytest-html report (``html_report.baseline_diff_html``, ``diff_turns``)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from pytest_llmsim.reporting.baseline import ScenarioDelta
from pytest_llmsim.reporting.html import STYLE, baseline_diff_html, diff_turns, turn_key

HOSTILE = "<script>alert('x')</script> </td></tr></table> & \"quoted\""
OLD = [
    {"role": "client", "text": "Hi"},
    {"role": "agent", "text": "Hello, how can I help?"},
    {"role": "client", "text": "Refund order 7"},
    {"role": "agent", "text": "Done.", "tool_calls": [{"name": "refund", "arguments": {"order": 7}, "result": None}]},
    {"role": "client", "text": "Thanks, bye"},
]
NEW = [
    {"role": "client", "text": "Hi", "cached": True},  # flags are not compared
    {"role": "agent", "text": "Hello, how can I help?"},
    {"role": "client", "text": "Refund order 7"},
    {"role": "agent", "text": "Done.", "tool_calls": [{"name": "refund", "arguments": {"order": 8}, "result": None}]},
    {"role": "agent", "text": HOSTILE, "tool_calls": [{"name": HOSTILE, "arguments": {"why": HOSTILE},
                                                       "result": HOSTILE}]},
]


def _delta(old: list[dict[str, Any]], new: list[dict[str, Any]], **extra: Any) -> ScenarioDelta:
    values: dict[str, Any] = dict(
        nodeid="suite.yaml::refund", scenario="refund", old_status="passed", new_status="failed", old_score=3,
        new_score=1, score_delta=-2, newly_failing=True, newly_passing=False, turns_delta=len(new) - len(old),
        tokens_delta=0, cost_delta_usd=0.0, transcript_changed=old != new, old_transcript=old, new_transcript=new,
        old_comment="Polite and correct.", new_comment=f"Refunded the wrong order {HOSTILE}")
    values.update(extra)
    return ScenarioDelta(**values)


class _Rows(HTMLParser):
    """The diff table's rows: their change and the text of each cell; and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr" and dict(attrs).get("data-change"):
            self.rows.append((str(dict(attrs)["data-change"]), []))
        elif tag == "td" and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self.rows:
            self.rows[-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _text(html: str) -> str:
    """The text a browser shows (tags dropped, entities decoded)."""
    chunks: list[str] = []
    parser = HTMLParser()
    parser.handle_data = chunks.append  # type: ignore[method-assign]
    parser.feed(html)
    return "".join(chunks)


def _parse(html: str) -> _Rows:
    parser = _Rows()
    parser.feed(html)
    parser.close()
    return parser


def test_diff_turns_pairs_equal_changed_added_and_removed() -> None:
    pairs = diff_turns(OLD, NEW)
    assert [(p.change, p.old_number, p.new_number) for p in pairs] == [
        ("equal", 1, 1), ("equal", 2, 2), ("equal", 3, 3), ("changed", 4, 4), ("changed", 5, 5)]
    removed = diff_turns(OLD, OLD[:2] + OLD[3:])
    assert [(p.change, p.old_number, p.new_number) for p in removed] == [
        ("equal", 1, 1), ("equal", 2, 2), ("removed", 3, None), ("equal", 4, 3), ("equal", 5, 4)]
    added = diff_turns(OLD[:2], OLD)
    assert [(p.change, p.old_number, p.new_number) for p in added][2:] == [
        ("added", None, 3), ("added", None, 4), ("added", None, 5)]
    assert diff_turns([], []) == []
    # A replaced stretch longer on one side: pairs, then the surplus as removed.
    replaced = diff_turns([{"role": "agent", "text": t} for t in "abc"], [{"role": "agent", "text": "x"}])
    assert [p.change for p in replaced] == ["changed", "removed", "removed"]


def test_turn_key_compares_role_text_and_full_tool_calls() -> None:
    long_args = {"blob": "y" * 1000}
    one = {"role": "agent", "text": "t", "tool_calls": [{"name": "f", "arguments": {**long_args, "k": 1}}]}
    two = {"role": "agent", "text": "t", "tool_calls": [{"name": "f", "arguments": {**long_args, "k": 2}}]}
    assert turn_key(one) != turn_key(two)  # beyond what a report shows of the arguments
    assert turn_key({"role": "client", "text": "a", "scripted": True}) == turn_key({"role": "client", "text": "a"})
    assert turn_key({"role": "agent", "text": None}) == turn_key({"role": "agent", "text": ""})


def test_side_by_side_table_marks_the_changes() -> None:
    html = baseline_diff_html(_delta(OLD, [*NEW[:3], NEW[4]]))
    parsed = _parse(html)
    assert [change for change, _ in parsed.rows] == ["equal", "equal", "equal", "changed", "removed"]
    assert parsed.rows[0][1] == ["#1", "CustomerHi", "#1", "CustomerHi"]
    changed = parsed.rows[3][1]
    assert changed[0] == "#4changed" and changed[2] == "#4"
    assert 'refund({"order": 7})' in changed[1] and "Done." in changed[1]
    assert HOSTILE in changed[3]  # shown as text, exactly as written
    assert parsed.rows[4][1] == ["#5removed", "CustomerThanks, bye", "", ""]
    assert '<tr class="llmsim-diff-removed" data-change="removed">' in html
    assert "<th>Baseline</th>" in html and "<th>This run</th>" in html
    assert "score 3 → 1 (-2)" in html and "passed → failed" in html and ">regressed<" in html
    added = _parse(baseline_diff_html(_delta(OLD[:2], OLD))).rows
    assert [change for change, _ in added] == ["equal", "equal", "added", "added", "added"]
    assert added[2][1][:3] == ["added", "", "#3"]  # the mark in the first column, the baseline cell empty


def test_everything_in_the_diff_is_escaped() -> None:
    html = baseline_diff_html(_delta([{"role": "client", "text": HOSTILE}], NEW, old_status=HOSTILE,
                                     old_comment=HOSTILE))
    assert "<script" not in html and "</td></tr></table> &" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &lt;/td&gt;&lt;/tr&gt;&lt;/table&gt; &amp; " in html
    parsed = _parse(html)
    assert parsed.tags.count("table") == 1 and "script" not in parsed.tags
    assert all(len(cells) == 4 for _, cells in parsed.rows)
    assert "<strong>Judge (baseline):</strong> &lt;script&gt;" in html
    assert "<strong>Judge (this run):</strong> Refunded the wrong order &lt;script&gt;" in html
    assert f"{HOSTILE} → failed" in _text(html)


def test_a_new_scenario_is_all_added_and_an_empty_one_says_so() -> None:
    new = _delta([], OLD[:2], old_status=None, old_score=None, score_delta=None, newly_failing=False,
                 new_status="passed", new_score=3, turns_delta=None)
    html = baseline_diff_html(new)
    assert "score - → 3" in html and "not in the baseline → passed" in html
    assert [change for change, _ in _parse(html).rows] == ["added", "added"]
    empty = baseline_diff_html(_delta([], [], old_comment="", new_comment=""))
    assert "No turns in either run." in empty and "<table" not in empty


def test_style_has_the_diff_rules() -> None:
    for rule in (".llmsim-diff-table", ".llmsim-diff-changed", ".llmsim-diff-removed", ".llmsim-diff-added"):
        assert rule in STYLE
    assert STYLE.startswith("<style>") and STYLE.endswith("</style>")
