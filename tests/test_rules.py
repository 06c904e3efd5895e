"""Tests of classifying failure reasons with a rule set: match kinds, order, policies, explain."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from retrier.rules import (
    BUILTIN_POLICY,
    Match,
    Policy,
    Reason,
    Rule,
    RuleSet,
)
from retrier.rulesfile import load_rules

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "config" / "rules.yaml"


def write_rules(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def rules_from(tmp_path: Path, rules_body: str, defaults: str = "") -> RuleSet:
    """Load a rules file whose rules list is ``rules_body`` (indented by 2)."""
    text = (
        "version: 1\n"
        + textwrap.dedent(defaults)
        + "rules:\n"
        + textwrap.indent(textwrap.dedent(rules_body).strip("\n"), "  ")
    )
    return load_rules(write_rules(tmp_path, text + "\n"))


KINDS = """
- name: exact
  match: {equals: "Message failed."}
  action: permanent
- name: substring
  match: {contains: ["not a WhatsApp user", "(#999)"]}
  action: permanent
- name: pattern
  match: {regex: "temporar(il)?y unavailable"}
  action: retry
- name: by-code
  match: {code: [131056, 470]}
  action: retry
"""


@pytest.fixture
def kinds(tmp_path: Path) -> RuleSet:
    return rules_from(tmp_path, KINDS)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Message failed.", "exact"),
        ("  MESSAGE FAILED.\n", "exact"),
        ("The message failed.", "default"),
        ("Message failed", "default"),
        ("Recipient is not a whatsapp user.", "substring"),
        ("RECIPIENT IS NOT A WHATSAPP USER", "substring"),
        ("weird (#999) thing", "substring"),
        ("not a WhatsApp", "default"),
        ("Service Temporarily Unavailable", "pattern"),
        ("temporary unavailable", "pattern"),
        ("xx temporarily unavailable yy", "pattern"),
        ("temporarily available", "default"),
        ("(#131056) pair rate limit", "by-code"),
        ("error 131056", "by-code"),
        ("error 470: window expired", "by-code"),
        ("error 1310560", "default"),
        ("call +1 555 131 0560", "default"),
        ("", "default"),
    ],
)
def test_classify_match_kinds(kinds: RuleSet, text: str, rule: str) -> None:
    assert kinds.classify(Reason(text)).rule == rule


def test_contains_is_literal(tmp_path: Path) -> None:
    ruleset = rules_from(tmp_path, "- {name: dots, match: {contains: 'a.b*c'}, action: permanent}")

    assert ruleset.classify(Reason("xx a.b*c yy")).rule == "dots"
    assert ruleset.classify(Reason("aXbbbc")).rule == "default"


def test_regex_is_case_insensitive_and_unanchored(tmp_path: Path) -> None:
    ruleset = rules_from(tmp_path, "- {name: r, match: {regex: 'try again'}, action: retry}")

    assert ruleset.classify(Reason("Please TRY AGAIN later")).matched


def test_code_matches_structured_code(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("Re-engagement window expired", code=470)).rule == "by-code"


def test_code_matches_structured_code_with_empty_text(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("", code=470)).rule == "by-code"


def test_code_unknown_structured_code(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("", code=12)).rule == "default"


def test_code_structured_and_text_codes_both_count(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("retry after error 131056", code=12)).rule == "by-code"


def test_match_mapping_needs_all_keys(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: both
          match: {code: 131026, contains: "undeliverable"}
          action: permanent
        """,
    )

    assert ruleset.classify(Reason("(#131026) Message undeliverable")).rule == "both"
    assert ruleset.classify(Reason("(#131026) Receiver incapable")).rule == "default"
    assert ruleset.classify(Reason("Message undeliverable")).rule == "default"


def test_match_list_needs_any_alternative(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: either
          match:
            - {code: 131026}
            - {contains: "not a WhatsApp user"}
          action: permanent
        """,
    )

    assert ruleset.classify(Reason("(#131026) Receiver incapable")).rule == "either"
    assert ruleset.classify(Reason("Recipient is not a WhatsApp user.")).rule == "either"
    assert ruleset.classify(Reason("other")).rule == "default"


def test_first_match_wins(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - {name: by-code, match: {code: 131056}, action: retry}
        - {name: by-text, match: {contains: "rate limit"}, action: permanent}
        """,
    )

    assert ruleset.classify(Reason("(#131056) pair rate limit hit")).rule == "by-code"
    assert ruleset.classify(Reason("rate limit hit")).rule == "by-text"


def test_first_match_wins_across_code_and_text_order(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - {name: by-text, match: {contains: "rate limit"}, action: permanent}
        - {name: by-code, match: {code: 131056}, action: retry}
        """,
    )

    assert ruleset.classify(Reason("(#131056) pair rate limit hit")).rule == "by-text"


def test_unmatched_gets_defaults(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        "- {name: r, match: {code: 1}, action: retry}",
        defaults="""
        defaults:
          action: retry
          max_attempts: 1
          backoff: {initial: 10s, max: 1h}
        """,
    )

    result = ruleset.classify(Reason("something new"))

    assert result.rule == "default"
    assert result.matched is False
    assert result.action == "retry"
    assert result.policy == Policy(
        max_attempts=1,
        backoff_initial_s=10.0,
        backoff_max_s=3600.0,
        delay_s=0.0,
        max_age_s=None,
        alert=False,
    )


def test_defaults_builtin_when_unset(tmp_path: Path) -> None:
    ruleset = rules_from(tmp_path, "- {name: r, match: {code: 1}, action: retry}")

    result = ruleset.classify(Reason("something new"))

    assert result.action == "retry"
    assert result.policy == BUILTIN_POLICY


def test_defaults_action_permanent_alerts(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        "- {name: r, match: {code: 1}, action: retry}",
        defaults="defaults: {action: permanent}\n",
    )

    result = ruleset.classify(Reason("something new"))

    assert result.action == "permanent"
    assert result.policy.alert is True


def test_rule_inherits_unset_policy_keys(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: r
          match: {contains: x}
          action: retry
          backoff: {initial: 5s}
          delay: 1m
        """,
        defaults="""
        defaults:
          max_attempts: 7
          backoff: {initial: 1m, max: 2h}
          max_age: 6h
        """,
    )

    policy = ruleset.classify(Reason("x")).policy

    assert policy.max_attempts == 7
    assert policy.backoff_initial_s == 5.0
    assert policy.backoff_max_s == 7200.0
    assert policy.delay_s == 60.0
    assert policy.max_age_s == 21600.0


def test_rule_policy_keys_override_defaults(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: r
          match: {contains: x}
          action: retry
          max_attempts: 5
          backoff: {initial: 6s, max: 2m}
          delay: 24h
          max_age: 1h
          alert: true
        """,
        defaults="defaults: {max_attempts: 1, delay: 0s}\n",
    )

    assert ruleset.classify(Reason("x")).policy == Policy(
        max_attempts=5,
        backoff_initial_s=6.0,
        backoff_max_s=120.0,
        delay_s=86400.0,
        max_age_s=3600.0,
        alert=True,
    )


@pytest.mark.parametrize(
    ("action", "alert"), [("retry", False), ("permanent", True), ("pause", True)]
)
def test_alert_default_follows_action(tmp_path: Path, action: str, alert: bool) -> None:
    ruleset = rules_from(tmp_path, f"- {{name: r, match: {{contains: x}}, action: {action}}}")

    assert ruleset.classify(Reason("x")).policy.alert is alert


def test_alert_not_inherited_from_defaults(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        "- {name: r, match: {contains: x}, action: permanent}",
        defaults="defaults: {alert: false}\n",
    )

    assert ruleset.classify(Reason("x")).policy.alert is True
    assert ruleset.classify(Reason("y")).policy.alert is False


def test_alert_false_on_permanent_rule(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path, "- {name: r, match: {contains: x}, action: permanent, alert: false}"
    )

    assert ruleset.classify(Reason("x")).policy.alert is False


def test_classify_explanation_names_condition(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("Recipient is not a WhatsApp user.")).explanation == (
        "Matched contains 'not a WhatsApp user'."
    )


def test_classify_explanation_names_text_code(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("(#131056) pair rate limit")).explanation == (
        "Matched code 131056 (found in the text)."
    )


def test_classify_explanation_names_structured_code(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("", code=470)).explanation == (
        "Matched code 470 (the structured code)."
    )


def test_classify_explanation_names_regex_hit(kinds: RuleSet) -> None:
    explanation = kinds.classify(Reason("Service temporarily unavailable")).explanation

    assert explanation == (
        "Matched regex 'temporar(il)?y unavailable' (on 'temporarily unavailable')."
    )


def test_classify_explanation_unmatched(kinds: RuleSet) -> None:
    explanation = kinds.classify(Reason("id 3851827 failed, error 999")).explanation

    assert explanation == (
        "No rule matched, so the defaults apply (codes found: 999 (in the text))."
    )


def test_classify_explanation_empty_reason(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("")).explanation == (
        "No rule matched: the reason is empty and carries no code."
    )


def test_classify_result_is_cached_and_equal(kinds: RuleSet) -> None:
    first = kinds.classify(Reason("error 131056"))
    second = kinds.classify(Reason("error 131056"))

    assert first is second


def test_classify_long_reason_not_cached(kinds: RuleSet) -> None:
    text = "x" * 5000 + " temporarily unavailable"

    assert kinds.classify(Reason(text)).rule == "pattern"
    assert kinds.classify(Reason(text)) is not kinds.classify(Reason(text))


def test_classify_lone_surrogate(kinds: RuleSet) -> None:
    assert kinds.classify(Reason("temporarily unavailable \ud800")).rule == "pattern"


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "1 " * 50_000,
        "1a" * 50_000,
        "(#1" * 34_000,
        "+1 555 123 4567 " * 6_250,
        "temporar" * 12_500,
        "é" * 100_000,
        " ".join(f"#{n}" for n in range(1_000, 30_000))[:100_000],
    ],
    ids=["letters", "digits", "digit-letter", "hash", "phones", "near-miss", "accents", "codes"],
)
def test_classify_adversarial_100kb_unmatched(kinds: RuleSet, text: str) -> None:
    assert kinds.classify(Reason(text)).rule == "default"


def test_classify_adversarial_100kb_code_at_end(kinds: RuleSet) -> None:
    text = "+1 555 123 4567, " * 5_800 + "then (#131056)"

    assert kinds.classify(Reason(text)).rule == "by-code"


def test_classify_adversarial_100kb_text_at_end(kinds: RuleSet) -> None:
    text = "temporar" * 12_500 + " temporarily unavailable"

    assert kinds.classify(Reason(text)).rule == "pattern"


def test_explain_matching_rule(kinds: RuleSet) -> None:
    text = kinds.explain(Reason("(#131056) pair rate limit"))

    assert "Rule: by-code (" in text
    assert "rules.yaml:" in text
    assert "Action: retry" in text
    assert "Why: Matched code 131056 (found in the text)." in text
    assert "Codes: 131056 (in the text)" in text


def test_explain_policy_of_retry(kinds: RuleSet) -> None:
    text = kinds.explain(Reason("error 131056"))

    assert (
        "Policy: max_attempts=3, backoff=30s..30m, delay=0s,"
        " max_age=RETRIER_MAX_MESSAGE_AGE, alert=no"
    ) in text


def test_explain_policy_of_permanent(kinds: RuleSet) -> None:
    text = kinds.explain(Reason("not a whatsapp user"))

    assert "Policy: alert=yes; nothing is resent" in text


def test_explain_unmatched(kinds: RuleSet) -> None:
    text = kinds.explain(Reason("brand new failure"))

    assert "Rule: none matched, so the defaults apply (unclassified)" in text


def test_explain_lists_partial_matches(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: both
          match: {code: 131026, contains: "undeliverable"}
          action: permanent
        - {name: any-code, match: {code: 131026}, action: retry}
        """,
    )

    text = ruleset.explain(Reason("(#131026) Receiver incapable"))

    assert "Earlier rules that matched in part:" in text
    assert (
        f"  both ({tmp_path / 'rules.yaml'}:3): code 131026 (found in the text) matched,"
        " but contains 'undeliverable' did not"
    ) in text


def test_explain_shows_description(tmp_path: Path) -> None:
    ruleset = rules_from(
        tmp_path,
        """
        - name: r
          description: >-
            Send an approved
            template instead.
          match: {contains: x}
          action: permanent
        """,
    )

    assert "Description: Send an approved template instead." in ruleset.explain(Reason("x"))


def test_ruleset_built_in_code() -> None:
    rule = Rule(
        name="window",
        match=(Match(codes=frozenset({470})), Match(contains=("window has closed",))),
        action="permanent",
        policy=BUILTIN_POLICY,
    )
    ruleset = RuleSet(path=Path("memory"), version=1, digest="", rules=(rule,))

    assert ruleset.classify(Reason("The 24-hour messaging WINDOW has closed.")).rule == "window"
    assert ruleset.classify(Reason("", code=470)).rule == "window"


def test_match_without_condition_rejected() -> None:
    with pytest.raises(ValueError, match="at least one of"):
        Match()


def test_match_bad_regex_rejected() -> None:
    with pytest.raises(ValueError, match="missing \\)"):
        Match(regex="(a")


def test_ruleset_digest_and_version() -> None:
    ruleset = load_rules(SHIPPED_RULES)

    assert ruleset.version == 1
    assert len(ruleset.digest) == 12
    assert all(c in "0123456789abcdef" for c in ruleset.digest)


def test_ruleset_rule_lines_point_at_rules() -> None:
    ruleset = load_rules(SHIPPED_RULES)
    lines = SHIPPED_RULES.read_text(encoding="utf-8").splitlines()

    for rule in ruleset.rules:
        assert rule.line is not None
        assert lines[rule.line - 1].strip() == f"- name: {rule.name}"
