"""The built-in deterministic metrics: ``rules`` (checks, language detection) and ``rouge``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.metrics.api import Conversation, MetricResult
from pytest_llmsim.metrics.rules import RougeMetric, RulesMetric, _read_reference, detect_language
from pytest_llmsim.model.scenario import Scenario

SCENARIO = Scenario(name="a")


def conversation(*turns: Any, ended_by: str = "client") -> Conversation:
    """Turns alternate client/agent from a client turn; a turn is a text or ``(text, [tool calls])`` for the agent."""
    built = []
    for i, turn in enumerate(turns):
        role = "client" if i % 2 == 0 else "agent"
        text, calls = (turn, None) if isinstance(turn, str) else turn
        entry: dict[str, Any] = {"role": role, "text": text}
        if calls is not None:
            entry["tool_calls"] = calls
        built.append(entry)
    return Conversation(turns=tuple(built), ended_by=ended_by, scenario_name="a")


def rules(conv: Conversation, **options: Any) -> MetricResult:
    return RulesMetric(options).evaluate(conv, SCENARIO)


# Turns 2 and 4 are the agent's.
REFUND = conversation("I want my money back", "Sorry, let me check your Order.", "Please hurry",
                      "We cannot issue a refund for this order.")


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "result": None}


TOOLS = conversation(
    "hi", ("Looking it up.", [call("lookup_order", order_id=7), call("check_policy", kind="refund")]),
    "ok", ("Done.", [call("issue_refund", order_id=7, amount=10.5, meta={"by": "bot", "at": 1})]),
)


# -- text checks --------------------------------------------------------------------------------------------------
def test_contains_passes_case_insensitive_by_default() -> None:
    result = rules(REFUND, contains=["ORDER", "refund"])
    assert (result.passed, result.score, result.reason) == (True, 1.0, "")
    assert result.details["checks"] == [
        {"check": "contains 'ORDER'", "passed": True, "detail": "contains 'ORDER' found in agent turns 2, 4"},
        {"check": "contains 'refund'", "passed": True, "detail": "contains 'refund' found in agent turn 4"},
    ]


def test_contains_fails_with_reason() -> None:
    result = rules(REFUND, contains="voucher")
    assert (result.passed, result.score) == (False, 0.0)
    assert result.reason == "contains 'voucher' not found in any agent turn"


def test_contains_case_sensitive() -> None:
    result = rules(REFUND, contains=["Order", "ORDER"], case_sensitive=True)
    assert (result.passed, result.score) == (False, 0.5)
    assert result.reason == "contains 'ORDER' not found in any agent turn"


def test_contains_ignores_client_turns() -> None:
    assert rules(REFUND, contains="money").reason == "contains 'money' not found in any agent turn"


def test_not_contains() -> None:
    assert rules(REFUND, not_contains=["voucher"]).passed is True
    result = rules(REFUND, not_contains=["Refund", "voucher"])
    assert (result.passed, result.score) == (False, 0.5)
    assert result.reason == "not_contains 'Refund' found in agent turn 4"
    assert rules(REFUND, not_contains="order").reason == "not_contains 'order' found in agent turns 2, 4"
    assert rules(REFUND, not_contains="Refund", case_sensitive=True).passed is True


def test_regex_and_not_regex() -> None:
    assert rules(REFUND, regex=r"can(not|'t) issue", not_regex=r"\d{4}").passed is True
    result = rules(REFUND, regex=[r"refund\b", r"voucher \d+"])
    assert result.reason == r"regex 'voucher \d+' matched no agent turn"
    assert rules(REFUND, not_regex="^sorry").reason == "not_regex '^sorry' matched in agent turn 2"
    assert rules(REFUND, regex="^sorry", case_sensitive=True).reason == "regex '^sorry' matched no agent turn"


def test_several_failures_join_in_order() -> None:
    result = rules(REFUND, contains="voucher", not_contains="refund", max_agent_turns=1, ended_by="agent")
    assert result.score == 0.0
    assert result.reason == ("contains 'voucher' not found in any agent turn; not_contains 'refund' found in agent "
                             "turn 4; ended_by client, expected agent; max_agent_turns 1 exceeded: 2 agent turns")
    assert [check["check"] for check in result.details["checks"]] == [
        "contains 'voucher'", "not_contains 'refund'", "ended_by", "max_agent_turns"]


# -- ended_by and turn counts --------------------------------------------------------------------------------------
def test_ended_by() -> None:
    assert rules(REFUND, ended_by="client").passed is True
    assert rules(REFUND, ended_by=["agent", "client"]).passed is True
    timed_out = conversation("hi", "hello", ended_by="timeout")
    assert rules(timed_out, ended_by=["client", "agent"]).reason == "ended_by timeout, expected client or agent"
    assert rules(timed_out, ended_by=["client", "agent", "script"]).reason == \
        "ended_by timeout, expected client, agent or script"
    assert rules(conversation("hi", ended_by=""), ended_by="agent").reason == "ended_by unknown, expected agent"


def test_agent_turn_bounds() -> None:
    assert rules(REFUND, max_agent_turns=2, min_agent_turns=2).passed is True
    assert rules(REFUND, max_agent_turns=1).reason == "max_agent_turns 1 exceeded: 2 agent turns"
    assert rules(REFUND, min_agent_turns=3).reason == "min_agent_turns 3 not reached: 2 agent turns"
    assert rules(conversation("hi", "hello"), min_agent_turns=2).reason == "min_agent_turns 2 not reached: 1 agent turn"
    result = rules(REFUND, max_agent_turns=2)
    assert result.details["checks"][0]["detail"] == "2 agent turns, at most 2 allowed"


# -- tool calls ---------------------------------------------------------------------------------------------------
def test_tool_called_by_name() -> None:
    assert rules(TOOLS, tool_called="issue_refund").passed is True
    assert rules(TOOLS, tool_called=["lookup_order", "check_policy"]).score == 1.0
    result = rules(TOOLS, tool_called=["lookup_order", "escalate"])
    assert (result.passed, result.score, result.reason) == (False, 0.5, "tool 'escalate' never called")


def test_tool_called_with_argument_subsets() -> None:
    matching = [
        {"name": "issue_refund", "arguments": {"order_id": 7}},
        {"name": "issue_refund", "arguments": {"amount": 10.5, "meta": {"by": "bot"}}},
        {"name": "issue_refund", "arguments": {}},
        {"name": "check_policy"},
    ]
    assert rules(TOOLS, tool_called=matching).passed is True
    result = rules(TOOLS, tool_called=[{"name": "issue_refund", "arguments": {"order_id": 8}}])
    assert result.reason == ('tool \'issue_refund\' with arguments {"order_id": 8} never called (called with '
                             '{"amount": 10.5, "meta": {"at": 1, "by": "bot"}, "order_id": 7})')
    nested = rules(TOOLS, tool_called=[{"name": "issue_refund", "arguments": {"meta": {"by": "human"}}}])
    assert nested.passed is False
    missing_key = rules(TOOLS, tool_called=[{"name": "lookup_order", "arguments": {"customer": "x"}}])
    assert missing_key.passed is False
    other_tool = rules(TOOLS, tool_called=[{"name": "escalate", "arguments": {"order_id": 7}}])
    assert other_tool.reason == "tool 'escalate' never called"


def test_tool_arguments_given_as_json_text_and_strict_types() -> None:
    conv = conversation("hi", ("ok", [{"name": "pay", "arguments": '{"amount": 1, "ok": true}'}]))
    assert rules(conv, tool_called=[{"name": "pay", "arguments": {"amount": 1}}]).passed is True
    assert rules(conv, tool_called=[{"name": "pay", "arguments": {"amount": "1"}}]).passed is False
    assert rules(conv, tool_called=[{"name": "pay", "arguments": {"ok": 1}}]).passed is False


def test_tool_order() -> None:
    ordered = rules(TOOLS, tool_called=["lookup_order", "issue_refund"], tool_order=True)
    assert (ordered.passed, ordered.score) == (True, 1.0)
    assert ordered.details["checks"][-1] == {"check": "tool_order", "passed": True,
                                             "detail": "tools called in order lookup_order, issue_refund"}
    wrong = rules(TOOLS, tool_called=["issue_refund", "lookup_order"], tool_order=True)
    assert (wrong.passed, wrong.score) == (False, 2 / 3)
    assert wrong.reason == ("tool_order issue_refund, lookup_order not followed "
                            "(calls: lookup_order, check_policy, issue_refund)")
    with_args = rules(TOOLS, tool_order=True, tool_called=[
        {"name": "lookup_order", "arguments": {"order_id": 7}}, {"name": "issue_refund", "arguments": {"order_id": 7}}])
    assert with_args.passed is True
    # without tool_order the same reversed list passes
    assert rules(TOOLS, tool_called=["issue_refund", "lookup_order"]).passed is True


def test_tool_checks_without_any_call() -> None:
    result = rules(REFUND, tool_called=["a", "b"], tool_order=True)
    assert result.reason == "tool 'a' never called; tool 'b' never called; tool_order a, b not followed (calls: none)"


# -- language -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Thank you for your order, it will arrive on Monday.", "en"),
        ("Could you share your order number so I can check the status?", "en"),
        ("Спасибо за ваш заказ, он будет доставлен в понедельник.", "ru"),
        ("Конечно, я могу вам помочь.", "ru"),
        ("К сожалению, мы не можем вернуть деньги после тридцати дней.", "ru"),
        ("Дякую за ваше замовлення, його буде доставлено в понеділок.", "uk"),
        ("Звичайно, я можу вам допомогти.", "uk"),
        ("На жаль, ми не можемо повернути гроші після тридцяти днів.", "uk"),
        ("Vielen Dank für Ihre Bestellung, sie wird am Montag geliefert.", "de"),
        ("Leider können wir nach dreißig Tagen keine Rückerstattung anbieten.", "de"),
        ("Merci pour votre commande, elle arrivera lundi.", "fr"),
        ("J'ai vérifié votre compte et le remboursement est en cours.", "fr"),
        ("Gracias por su pedido, llegará el lunes.", "es"),
        ("¿Podría darme su número de pedido?", "es"),
        ("Grazie per il suo ordine, arriverà lunedì.", "it"),
        ("Obrigado pelo seu pedido, ele chegará na segunda-feira.", "pt"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize("text", ["", "Hi", "OK, thanks", "Order 12345", "Sí, claro", "Paris London Berlin Madrid",
                                  "hello привет мир world", "Москва Київ Берлин", "ORD-1234 ✅ 42"])
def test_detect_language_short_or_ambiguous(text: str) -> None:
    assert detect_language(text) is None


def test_language_check() -> None:
    conv = conversation("Hallo", "Thank you for your order, it will arrive on Monday.", "ok", "OK!",
                        "danke", "Спасибо за ваш заказ, он будет доставлен в понедельник.")
    result = rules(conv, language="en")
    assert (result.passed, result.reason) == (False, "language en expected: agent turn 6 is ru")
    two = conversation("x", "Спасибо за ваш заказ, он будет доставлен в понедельник.", "y",
                       "Vielen Dank für Ihre Bestellung, sie wird am Montag geliefert.")
    assert rules(two, language="en").reason == "language en expected: agent turn 2 is ru, agent turn 4 is de"
    english = conversation("x", "Thank you for your order, it will arrive on Monday.", "y", "Bye!")
    passed = rules(english, language="EN")
    assert passed.passed is True
    assert passed.details["checks"][0]["detail"] == \
        "language en in every agent turn told (1 agent turn too short or ambiguous, skipped)"
    assert rules(conversation("x", "OK"), language="ru").passed is True  # nothing to tell: skipped, not failed


# -- options ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "the 'rules' metric needs at least one check: contains, not_contains, regex, not_regex, tool_called, "
             "ended_by, max_agent_turns, min_agent_turns or language"),
        ({"case_sensitive": True}, "the 'rules' metric needs at least one check"),
        ({"contians": "x"}, "unknown option 'contians' of the 'rules' metric; known options: contains, "
                            "not_contains, regex"),
        ({"contains": 5}, "option 'contains' must be a string or a non-empty list of strings (got 5)"),
        ({"contains": []}, "option 'contains' must be a string or a non-empty list of strings (got [])"),
        ({"not_contains": ["a", 1]}, "option 'not_contains' must be a string or a non-empty list of strings"),
        ({"contains": ""}, "option 'contains' must not contain an empty string"),
        ({"regex": "("}, "option 'regex': '(' is not a valid regular expression: missing ), unterminated subpattern"),
        ({"not_regex": ["ok", None]}, "option 'not_regex' must be a pattern or a non-empty list of patterns"),
        ({"contains": "x", "case_sensitive": "yes"}, "option 'case_sensitive' must be true or false (got 'yes')"),
        ({"tool_called": 3}, "option 'tool_called' must be a tool name, or a non-empty list of tool names and "
                             "{name: ..., arguments: {...}} entries (got 3)"),
        ({"tool_called": [{"name": "a", "args": {}}]}, "option 'tool_called': unknown key 'args' in "),
        ({"tool_called": [{"arguments": {}}]}, "option 'tool_called': an entry needs a non-empty 'name'"),
        ({"tool_called": [{"name": "a", "arguments": [1]}]}, "option 'tool_called': 'arguments' of 'a' must be an "
                                                               "object"),
        ({"tool_called": ["a", "b"], "tool_order": 1}, "option 'tool_order' must be true or false (got 1)"),
        ({"tool_called": "a", "tool_order": True}, "option 'tool_order' needs 'tool_called' to list at least two"),
        ({"tool_order": True}, "option 'tool_order' needs 'tool_called'"),
        ({"ended_by": "customer"}, "option 'ended_by': 'customer' is not one of client, agent, script, max_turns, "
                                   "timeout"),
        ({"max_agent_turns": "3"}, "option 'max_agent_turns' must be a whole number of at least 0 (got '3')"),
        ({"min_agent_turns": True}, "option 'min_agent_turns' must be a whole number of at least 0 (got True)"),
        ({"max_agent_turns": -1}, "option 'max_agent_turns' must be a whole number of at least 0 (got -1)"),
        ({"max_agent_turns": 2, "min_agent_turns": 3}, "option 'min_agent_turns' (3) is above 'max_agent_turns' (2)"),
        ({"language": "xx"}, "option 'language' must be one of en, ru, uk, de, fr, es, it, pt (got 'xx')"),
        ({"language": ["en"]}, "option 'language' must be one of"),
    ],
)
def test_rules_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        RulesMetric(options)
    assert str(info.value).startswith(message)


def test_rules_accepts_every_option_together() -> None:
    metric = RulesMetric({"contains": "a", "not_contains": ["b"], "regex": "c", "not_regex": ["d"],
                          "case_sensitive": True, "tool_called": ["x", {"name": "y", "arguments": {"k": 1}}],
                          "tool_order": True, "ended_by": "agent", "max_agent_turns": 5, "min_agent_turns": 0,
                          "language": "en"})
    result = metric.evaluate(REFUND, SCENARIO)
    assert len(result.details["checks"]) == 11
    assert result.name == "rules"


# -- rouge --------------------------------------------------------------------------------------------------------
ANSWER = "Your order 42 is confirmed and will ship tomorrow."


def rouge(conv: Conversation, **options: Any) -> MetricResult:
    return RougeMetric(options).evaluate(conv, SCENARIO)


def test_rouge_identical_text() -> None:
    result = rouge(conversation("hi", ANSWER), reference=ANSWER)
    assert result.score == pytest.approx(1.0)
    assert result.passed is None
    assert result.reason == "rougeL F1 1.00"
    assert result.details == {"precision": pytest.approx(1.0), "recall": pytest.approx(1.0),
                              "f1": pytest.approx(1.0), "variant": "rougeL", "target": "all"}


def test_rouge_unrelated_text_is_low() -> None:
    result = rouge(conversation("hi", "Bananas grow in tropical climates near rivers."), reference=ANSWER)
    assert result.score is not None and result.score < 0.1


@pytest.mark.parametrize("variant", ["rouge1", "rouge2", "rougeL"])
def test_rouge_variants(variant: str) -> None:
    result = rouge(conversation("hi", "Your order is confirmed."), reference=ANSWER, variant=variant)
    assert 0 < result.score < 1  # type: ignore[operator]
    assert result.details["variant"] == variant


def test_rouge_russian_pair() -> None:
    reference = "Ваш заказ подтверждён и будет отправлен завтра."
    same = rouge(conversation("привет", reference), reference=reference)
    assert same.score == pytest.approx(1.0)
    close = rouge(conversation("привет", "Ваш заказ подтверждён, отправим его завтра."), reference=reference,
                  variant="rouge1")
    # 4 shared words of 7 (reference) and 6 (answer): P=4/6, R=4/7
    assert close.details["precision"] == pytest.approx(4 / 6)
    assert close.details["recall"] == pytest.approx(4 / 7)
    unrelated = rouge(conversation("привет", "Погода сегодня хорошая, идёт снег."), reference=reference)
    assert unrelated.score == 0.0


def test_rouge_last_vs_all() -> None:
    conv = conversation("hi", "Let me check that for you.", "thanks", ANSWER)
    last = rouge(conv, reference=ANSWER, target="last")
    every = rouge(conv, reference=ANSWER)
    assert last.score == pytest.approx(1.0)
    assert every.score is not None and every.score < last.score  # type: ignore[operator]
    assert every.details["recall"] == pytest.approx(1.0)
    assert (last.details["target"], every.details["target"]) == ("last", "all")
    assert rouge(conversation("hi"), reference=ANSWER, target="last").score == 0.0


def test_rouge_threshold() -> None:
    conv = conversation("hi", "Your order is confirmed.")
    passed = rouge(conv, reference=ANSWER, threshold=0.3)
    assert passed.passed is True
    assert passed.reason == f"rougeL F1 {passed.score:.2f} at least threshold 0.30"
    failed = rouge(conv, reference=ANSWER, threshold=0.9)
    assert failed.passed is False
    assert failed.reason == f"rougeL F1 {failed.score:.2f} below threshold 0.90"
    assert rouge(conv, reference=ANSWER, threshold=1).passed is False
    assert rouge(conv, reference=ANSWER, threshold=0).passed is True


def test_rouge_reference_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "answer.txt").write_text(ANSWER + "\n", encoding="utf-8")
    conv = conversation("hi", ANSWER)
    assert rouge(conv, reference_file=str(tmp_path / "refs" / "answer.txt")).score == pytest.approx(1.0)
    assert rouge(conv, reference_file="refs/answer.txt", base_dir=str(tmp_path)).score == pytest.approx(1.0)
    monkeypatch.chdir(tmp_path)
    assert rouge(conv, reference_file="refs/answer.txt").score == pytest.approx(1.0)
    assert _read_reference("answer.txt", tmp_path / "refs") == ANSWER + "\n"
    # an absolute path ignores base_dir
    assert _read_reference(tmp_path / "refs" / "answer.txt", "/nowhere") == ANSWER + "\n"


def test_rouge_reference_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"option 'reference_file': '.*missing.txt' cannot be read: No such file"):
        RougeMetric({"reference_file": "missing.txt", "base_dir": str(tmp_path)})
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"option 'reference_file': '.*bad.txt' is not UTF-8 text"):
        RougeMetric({"reference_file": "bad.txt", "base_dir": tmp_path})
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"option 'reference_file': the reference text is empty"):
        RougeMetric({"reference_file": "empty.txt", "base_dir": tmp_path})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "the 'rouge' metric needs exactly one of the options 'reference' (the text) and 'reference_file'"),
        ({"reference": "a", "reference_file": "b"}, "the 'rouge' metric needs exactly one of the options"),
        ({"reference": "a", "treshold": 0.5}, "unknown option 'treshold' of the 'rouge' metric; known options: "
                                              "reference, reference_file, base_dir, variant, target, threshold"),
        ({"reference": 3}, "option 'reference' must be a string (got 3)"),
        ({"reference": "  "}, "option 'reference': the reference text is empty"),
        ({"reference_file": ""}, "option 'reference_file' must not be empty"),
        ({"reference": "a", "variant": "rouge3"}, "option 'variant' must be one of rouge1, rouge2, rougeL "
                                                  "(got 'rouge3')"),
        ({"reference": "a", "target": "first"}, "option 'target' must be one of all, last (got 'first')"),
        ({"reference": "a", "threshold": 1.5}, "option 'threshold' must be a number from 0 to 1 (got 1.5)"),
        ({"reference": "a", "threshold": True}, "option 'threshold' must be a number from 0 to 1 (got True)"),
        ({"reference": "a", "threshold": "0.5"}, "option 'threshold' must be a number from 0 to 1 (got '0.5')"),
        ({"reference": "a", "base_dir": 1}, "option 'base_dir' must be a path (got 1)"),
    ],
)
def test_rouge_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        RougeMetric(options)
    assert str(info.value).startswith(message)


def test_rouge_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(ValueError, match=r"pip install 'pytest-llmsim\[rouge\]'"):
        RougeMetric({"reference": "a"})


# -- regexes with catastrophic backtracking (issue 24.11) ----------------------------------------------------------
RUNAWAY = "a" * 34 + "!"


@pytest.mark.slow
def test_a_nested_repeat_is_matched_at_once_and_a_runaway_regex_is_stopped_with_an_error() -> None:
    """``(a+)+$`` on 34 a's and '!' ran for hours under ``re`` (holding the interpreter); the rules metric now
    matches it at once, and a pattern that still backtracks is stopped after REGEX_SECONDS with an error naming the
    scenario, the check and the pattern."""
    import time

    from pytest_llmsim.metrics.api import MetricError
    from pytest_llmsim.metrics.rules import REGEX_SECONDS

    conv = conversation("hi", RUNAWAY)
    started = time.monotonic()
    result = rules(conv, regex=r"(a+)+$")
    assert result.passed is False and result.reason == "regex '(a+)+$' matched no agent turn"
    assert time.monotonic() - started < 1
    started = time.monotonic()
    with pytest.raises(MetricError) as caught:
        rules(conv, contains="a", not_regex=r"(a|aa)+$")
    assert time.monotonic() - started < REGEX_SECONDS + 5
    message = str(caught.value)
    assert message.startswith("scenario 'a': metric 'rules': not_regex '(a|aa)+$' took over 1 s on agent turn 2")
    assert "backtracks catastrophically" in message


@pytest.mark.slow
def test_pytest_with_a_runaway_regex_finishes_quickly_with_a_clear_error(sim: Any) -> None:
    """The whole run (a pytest subprocess) ends in seconds: the nested repeat gives a verdict, the runaway pattern
    errors its scenario only, naming it, and the other scenarios run."""
    import json
    import time

    from conftest import scenario, verdict
    from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

    script = {"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "Fine by every criterion.")},
        {"match": {"system_contains": "AGENT"}, "replies": [RUNAWAY, "Bye. [END_CALL]"]},
        {"match": {"system_contains": "CLIENT"}, "replies": ["Hello", "Thanks"]},
    ]}
    sim.write_scenarios("re.json", [
        scenario("nested", evaluate=["judge", {"rules": {"regex": "(a+)+$"}}]),
        scenario("runaway", evaluate=["judge", {"rules": {"not_regex": "(a|aa)+$"}}]),
        scenario("plain", evaluate=["judge", {"rules": {"regex": "a+!"}}]),
    ])
    with ScriptedOpenAIServer(script) as server:
        started = time.monotonic()
        result = sim.pytester.runpytest_subprocess("-p", "no:randomly", f"--llmsim-base-url={server.base_url}",
                                                   "--llmsim-results=out.json", "-rA", timeout=90)
        took = time.monotonic() - started
    assert took < 60, took
    outcomes = {r["scenario"]: (r["outcome"], r["error_kind"], r["error_message"])
                for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert outcomes["nested"][0] == "failed" and outcomes["plain"][0] == "passed", outcomes
    outcome, kind, message = outcomes["runaway"]
    assert (outcome, kind) == ("error", "metric_error")
    assert "scenario 'runaway': metric 'rules': not_regex '(a|aa)+$' took over 1 s" in message
    result.stdout.fnmatch_lines(["*runaway*metric 'rules': not_regex '(a|aa)+$' took over 1 s*"])
