"""Tests of running a cases file against a rule set and reporting the differences."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from retrier.errors import RulesError
from retrier.rules import RuleSet
from retrier.rulesfile import load_rules, run_cases

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "config" / "rules.yaml"
SHIPPED_CASES = REPO / "config" / "rules-cases.yaml"


def write(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(SHIPPED_RULES)


def test_shipped_cases_pass(shipped: RuleSet) -> None:
    report = run_cases(shipped, SHIPPED_CASES)

    assert report.failures == [], report.render()


def test_shipped_cases_are_many(shipped: RuleSet) -> None:
    assert run_cases(shipped, SHIPPED_CASES).total >= 100


def test_shipped_cases_cover_every_rule(shipped: RuleSet) -> None:
    text = SHIPPED_CASES.read_text(encoding="utf-8")

    assert [r.name for r in shipped.rules if f"rule: {r.name}," not in text] == []


def test_run_cases_wrong_case_renders_diff(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(
        tmp_path,
        """
        # one right, one wrong
        - reason: "(#131056) pair rate limit hit"
          rule: pair-rate-limit
          action: retry
        - reason: "Recipient is not a WhatsApp user."
          rule: not-a-whatsapp-user
          action: retry
        - reason: "brand new failure"
          rule: not-a-whatsapp-user
          action: permanent
        """,
    )

    report = run_cases(shipped, path)

    assert report.render() == (
        f'{path}:5: "Recipient is not a WhatsApp user."\n'
        "  expected rule=not-a-whatsapp-user action=retry\n"
        "  got      rule=not-a-whatsapp-user action=permanent\n"
        f'{path}:8: "brand new failure"\n'
        "  expected rule=not-a-whatsapp-user action=permanent\n"
        "  got      rule=default action=retry (unclassified)\n"
        "2 of 3 cases failed"
    )


def test_run_cases_counts(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(
        tmp_path,
        """
        - {reason: "(#131056) x", rule: pair-rate-limit, action: retry}
        - {reason: "x", rule: pair-rate-limit, action: retry}
        """,
    )

    report = run_cases(shipped, path)

    assert report.total == 2
    assert len(report.failures) == 1
    assert report.passed is False


def test_run_cases_all_passed_summary(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(tmp_path, '- {reason: "(#131056) x", rule: pair-rate-limit, action: retry}\n')

    assert run_cases(shipped, path).render() == "all 1 cases passed"


def test_run_cases_structured_code_shown(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(tmp_path, '- {reason: "", code: 470, rule: default, action: retry}\n')

    rendered = run_cases(shipped, path).render()

    assert rendered.splitlines()[0] == f'{path}:1: "" (code 470)'


def test_run_cases_unknown_rule_noted(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(tmp_path, '- {reason: "x", rule: no-such-rule, action: retry}\n')

    rendered = run_cases(shipped, path).render()

    assert "  note: the rules file has no rule named 'no-such-rule'" in rendered


def test_run_cases_long_reason_shortened(tmp_path: Path, shipped: RuleSet) -> None:
    path = write(tmp_path, f'- {{reason: "{"x" * 500}", rule: r, action: retry}}\n')

    first = run_cases(shipped, path).render().splitlines()[0]

    assert len(first) < len(str(path)) + 140


CASE_ERRORS = {
    "unknown-key": (
        """
        - reason: "x"
          rule: default
          action: retry
          expected: retry
        """,
        4,
        "unknown key 'expected' in case 1; allowed keys: reason, code, rule, action",
    ),
    "misspelt-key": (
        """
        - {reason: "x", rule: default, action: retry}
        - {reasn: "x", rule: default, action: retry}
        """,
        2,
        "unknown key 'reasn' in case 2; did you mean 'reason'?",
    ),
    "bad-yaml": ('- {reason: "x", rule: default\n', 2, "invalid YAML"),
    "empty": ("", 1, "the file contains no value (empty or null), expected a non-empty list"),
    "mapping": (
        "reason: x\n",
        1,
        "the file contains a mapping, expected a non-empty list of cases",
    ),
    "bad-action": (
        """
        - {reason: "x", rule: default, action: retry}
        - {reason: "x", rule: default, action: later}
        """,
        2,
        "invalid action in case 2: got 'later', expected one of 'retry', 'permanent' or 'pause'",
    ),
    "reason-number": (
        "- {reason: 131026, rule: default, action: retry}\n",
        1,
        "invalid reason in case 1: got 131026 (a number), expected text; put it in quotes",
    ),
    "missing-rule": (
        "- {reason: x, action: retry}\n",
        1,
        "missing key 'rule' in case 1",
    ),
    "duplicate-key": (
        """
        - reason: "x"
          reason: "y"
          rule: default
          action: retry
        """,
        2,
        'duplicate key "reason"',
    ),
}


@pytest.mark.parametrize(("text", "line", "fragment"), CASE_ERRORS.values(), ids=CASE_ERRORS.keys())
def test_run_cases_invalid_file_line(
    tmp_path: Path, shipped: RuleSet, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(RulesError) as caught:
        run_cases(shipped, path)

    assert caught.value.line == line, str(caught.value)


@pytest.mark.parametrize(("text", "line", "fragment"), CASE_ERRORS.values(), ids=CASE_ERRORS.keys())
def test_run_cases_invalid_file_message(
    tmp_path: Path, shipped: RuleSet, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(RulesError) as caught:
        run_cases(shipped, path)

    assert fragment in caught.value.message


def test_run_cases_missing_file(tmp_path: Path, shipped: RuleSet) -> None:
    with pytest.raises(RulesError, match="cannot read the file"):
        run_cases(shipped, tmp_path / "absent.yaml")
