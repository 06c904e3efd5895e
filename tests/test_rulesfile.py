"""Tests of loading and checking rules files: malformed files, examples, unreachable rules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from retrier.errors import RulesError
from retrier.rulesfile import check_rules, load_rules, main, rules_json_schema

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "config" / "rules.yaml"
SHIPPED_SCHEMA = REPO / "config" / "rules.schema.json"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


VALID = """
version: 1
defaults:
  action: retry
rules:
  - name: first
    match: {contains: "not a whatsapp user"}
    action: permanent
"""


# (file text, line of the error, text the message must contain)
MALFORMED = {
    "empty": ("", 1, "the file is empty"),
    "only-comment": ("# nothing here\n", 1, "the file is empty"),
    "top-level-list": ("- a\n- b\n", 1, "contains a list, expected a mapping"),
    "top-level-text": ("hello\n", 1, "contains 'hello'"),
    "syntax-error": (
        "version: 1\nrules: [\n  {name: a\n",
        4,
        "invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow"
        " mapping that starts at line 3)",
    ),
    "mapping-in-scalar": ("version: 1\nrules: a: b\n", 2, "invalid YAML"),
    "tab-indent": ("version: 1\nrules:\n\t- name: a\n", 3, "indented with a tab"),
    "duplicate-top-key": ("version: 1\nversion: 1\nrules: []\n", 2, 'duplicate key "version"'),
    "duplicate-rule-key": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            action: permanent
        """,
        6,
        'duplicate key "action"',
    ),
    "unknown-top-key": ("version: 1\nrule: []\n", 2, "unknown key 'rule'"),
    "unknown-top-key-suggests": ("version: 1\nrule: []\n", 2, "did you mean 'rules'?"),
    "unknown-rule-key": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            acton: retry
        """,
        5,
        "unknown key 'acton' in rule 'a'",
    ),
    "unknown-rule-key-lists-allowed": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            retries: 3
        """,
        6,
        "unknown key 'retries' in rule 'a'; allowed keys: max_attempts, backoff, delay,"
        " max_age, alert, name, description, match, action, examples",
    ),
    "unknown-match-key": (
        """
        version: 1
        rules:
          - name: a
            match:
              contanis: "x"
            action: retry
        """,
        5,
        "unknown key 'contanis' in match in rule 'a'; did you mean 'contains'?",
    ),
    "unknown-backoff-key": (
        """
        version: 1
        defaults:
          backoff:
            initial: 30s
            maximum: 30m
        rules: []
        """,
        5,
        "unknown key 'maximum' in defaults.backoff",
    ),
    "unknown-defaults-key": (
        "version: 1\ndefaults:\n  action: retry\n  tries: 2\nrules: []\n",
        4,
        "unknown key 'tries' in defaults",
    ),
    "non-text-key": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            1: x
        """,
        6,
        "key 1 (a number) in rule 'a' is not text",
    ),
    "version-2": ("version: 2\nrules: []\n", 1, "got 2 (a number), expected 1"),
    "version-quoted": ("version: '1'\nrules: []\n", 1, "got '1', expected 1"),
    "version-missing": ("rules: []\n", 1, "missing key 'version' in the file"),
    "rules-missing": ("version: 1\n", 1, "missing key 'rules' in the file"),
    "rules-not-list": (
        "version: 1\nrules:\n  name: a\n",
        2,
        "got a mapping, expected a list of rules",
    ),
    "rule-not-mapping": (
        "version: 1\nrules:\n  - just text\n",
        3,
        "got 'just text', expected a mapping",
    ),
    "defaults-empty": ("version: 1\ndefaults:\nrules: []\n", 2, "got no value (empty or null)"),
    "name-bare-yes": (
        """
        version: 1
        rules:
          - name: yes
            match: {code: 470}
            action: retry
        """,
        3,
        "got the bare word 'yes', which many YAML tools read as a boolean; put it in quotes",
    ),
    "name-bare-true": (
        """
        version: 1
        rules:
          - name: true
            match: {code: 470}
            action: retry
        """,
        3,
        'got true (a boolean), expected text; put it in quotes, as "true"',
    ),
    "name-bare-number": (
        """
        version: 1
        rules:
          - name: 404
            match: {code: 470}
            action: retry
        """,
        3,
        'got 404 (a number), expected text; put it in quotes, as "404"',
    ),
    "name-null": (
        """
        version: 1
        rules:
          - name: ~
            match: {code: 470}
            action: retry
        """,
        3,
        "to mean the word null, quote it",
    ),
    "name-not-slug": (
        """
        version: 1
        rules:
          - name: Not_A_Slug
            match: {code: 470}
            action: retry
        """,
        3,
        "got 'Not_A_Slug', expected a lowercase name of letters, digits and hyphens",
    ),
    "name-trailing-newline": (
        """
        version: 1
        rules:
          - name: "abc\\n"
            match: {code: 470}
            action: retry
        """,
        3,
        "got 'abc\\n', expected a lowercase name",
    ),
    "name-reserved": (
        """
        version: 1
        rules:
          - name: default
            match: {code: 470}
            action: retry
        """,
        3,
        "got 'default', which is reserved",
    ),
    "name-duplicate": (
        """
        version: 1
        rules:
          - name: same
            match: {code: 470}
            action: retry
          - name: same
            match: {code: 471}
            action: retry
        """,
        6,
        "duplicate rule name 'same'; the rule at line 3 has it already",
    ),
    "name-missing": (
        """
        version: 1
        rules:
          - match: {code: 470}
            action: retry
        """,
        3,
        "missing key 'name' in rule 1",
    ),
    "contains-bare-number": (
        """
        version: 1
        rules:
          - name: a
            match: {contains: 404}
            action: retry
        """,
        4,
        'got 404 (a number), expected text; put it in quotes, as "404"',
    ),
    "contains-bare-no-in-list": (
        """
        version: 1
        rules:
          - name: a
            match:
              contains:
                - "fine"
                - no
            action: retry
        """,
        7,
        "got the bare word 'no'",
    ),
    "contains-empty-text": (
        """
        version: 1
        rules:
          - name: a
            match: {contains: ""}
            action: retry
        """,
        4,
        "got '', expected non-blank text",
    ),
    "contains-blank-text": (
        """
        version: 1
        rules:
          - name: a
            match: {contains: "   "}
            action: retry
        """,
        4,
        "got '   ', expected non-blank text",
    ),
    "contains-empty-list": (
        """
        version: 1
        rules:
          - name: a
            match: {contains: []}
            action: retry
        """,
        4,
        "got an empty list, expected text, or a list of texts",
    ),
    "equals-bare-false": (
        """
        version: 1
        rules:
          - name: a
            match: {equals: false}
            action: retry
        """,
        4,
        'got false (a boolean), expected text; put it in quotes, as "false"',
    ),
    "equals-empty": (
        """
        version: 1
        rules:
          - name: a
            match:
              equals:
            action: retry
        """,
        5,
        "invalid match.equals in rule 'a': got no value (empty or null)",
    ),
    "regex-syntax": (
        """
        version: 1
        rules:
          - name: a
            match: {regex: "(unclosed"}
            action: retry
        """,
        4,
        "invalid regex '(unclosed': missing ): (unclosed",
    ),
    "regex-backreference": (
        """
        version: 1
        rules:
          - name: a
            match: {regex: '(a)\\1'}
            action: retry
        """,
        4,
        "invalid regex '(a)\\\\1': invalid escape sequence",
    ),
    "regex-lookbehind": (
        """
        version: 1
        rules:
          - name: a
            match: {regex: '(?<=x)y'}
            action: retry
        """,
        4,
        "invalid regex '(?<=x)y'",
    ),
    "regex-bare-number": (
        """
        version: 1
        rules:
          - name: a
            match: {regex: 131026}
            action: retry
        """,
        4,
        "got 131026 (a number), expected text",
    ),
    "code-quoted": (
        """
        version: 1
        rules:
          - name: a
            match: {code: "131026"}
            action: retry
        """,
        4,
        "got '131026', expected a whole number from 0 to 999999",
    ),
    "code-too-long": (
        """
        version: 1
        rules:
          - name: a
            match: {code: [470, 1310266]}
            action: retry
        """,
        4,
        "got 1310266 (a number), expected a whole number from 0 to 999999",
    ),
    "code-negative": (
        """
        version: 1
        rules:
          - name: a
            match: {code: -1}
            action: retry
        """,
        4,
        "got -1 (a number)",
    ),
    "code-boolean": (
        """
        version: 1
        rules:
          - name: a
            match: {code: true}
            action: retry
        """,
        4,
        "got true (a boolean), expected a whole number from 0 to 999999",
    ),
    "match-missing": (
        """
        version: 1
        rules:
          - name: a
            action: retry
        """,
        3,
        "missing key 'match' in rule 'a'",
    ),
    "match-empty-mapping": (
        """
        version: 1
        rules:
          - name: a
            match: {}
            action: retry
        """,
        4,
        "match has no condition",
    ),
    "match-empty-list": (
        """
        version: 1
        rules:
          - name: a
            match: []
            action: retry
        """,
        4,
        "got an empty list",
    ),
    "match-text": (
        """
        version: 1
        rules:
          - name: a
            match: "not a whatsapp user"
            action: retry
        """,
        4,
        "got 'not a whatsapp user', expected a mapping of conditions",
    ),
    "action-unknown": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retyr
        """,
        5,
        "got 'retyr', expected one of 'retry', 'permanent' or 'pause'",
    ),
    "action-missing": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
        """,
        3,
        "missing key 'action' in rule 'a'",
    ),
    "max-attempts-zero": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            max_attempts: 0
        """,
        6,
        "got 0 (a number), expected a whole number from 1 to 100",
    ),
    "max-attempts-too-many": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            max_attempts: 101
        """,
        6,
        "got 101 (a number), expected a whole number from 1 to 100",
    ),
    "max-attempts-float": (
        """
        version: 1
        defaults:
          max_attempts: 2.5
        rules: []
        """,
        3,
        "got 2.5 (a number), expected a whole number from 1 to 100",
    ),
    "max-attempts-boolean": (
        """
        version: 1
        defaults:
          max_attempts: true
        rules: []
        """,
        3,
        "got true (a boolean), expected a whole number",
    ),
    "max-attempts-quoted": (
        """
        version: 1
        defaults:
          max_attempts: "3"
        rules: []
        """,
        3,
        "got '3', expected a whole number",
    ),
    "delay-bad-unit": (
        """
        version: 1
        defaults:
          delay: 5x
        rules: []
        """,
        3,
        "got '5x', expected a number followed by s, m, h or d, such as 30s or 5m",
    ),
    "delay-bare-number": (
        """
        version: 1
        defaults:
          delay: 30
        rules: []
        """,
        3,
        "got 30 (a number), expected a number followed by s, m, h or d",
    ),
    "delay-negative": (
        """
        version: 1
        defaults:
          delay: -5m
        rules: []
        """,
        3,
        "got '-5m'",
    ),
    "max-age-zero": (
        """
        version: 1
        defaults:
          max_age: 0s
        rules: []
        """,
        3,
        "got a duration of 0s, expected one above 0s, such as 1h",
    ),
    "backoff-empty": (
        """
        version: 1
        defaults:
          backoff: {}
        rules: []
        """,
        3,
        "backoff is empty",
    ),
    "backoff-initial-over-max": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            backoff:
              initial: 1h
              max: 5m
        """,
        7,
        "invalid backoff.initial in rule 'a': initial 1h is longer than max 5m; set initial <= max",
    ),
    "backoff-initial-over-inherited-max": (
        """
        version: 1
        defaults:
          backoff: {max: 10m}
        rules:
          - name: a
            match: {code: 470}
            action: retry
            backoff: {initial: 1h}
        """,
        8,
        "invalid backoff in rule 'a': initial 1h is longer than max 10m",
    ),
    "backoff-initial-zero": (
        """
        version: 1
        defaults:
          backoff: {initial: 0s}
        rules: []
        """,
        3,
        "invalid defaults.backoff.initial: got a duration of 0s, expected one above 0s",
    ),
    "alert-bare-yes": (
        """
        version: 1
        defaults:
          alert: yes
        rules: []
        """,
        3,
        "got 'yes', expected true or false",
    ),
    "alert-number": (
        """
        version: 1
        defaults:
          alert: 1
        rules: []
        """,
        3,
        "got 1 (a number), expected true or false",
    ),
    "permanent-with-max-attempts": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: permanent
            max_attempts: 3
        """,
        6,
        "a permanent rule resends nothing, so only alert applies to it; remove max_attempts",
    ),
    "pause-with-delay": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 131042}
            action: pause
            alert: true
            delay: 5m
        """,
        7,
        "a pause rule resends nothing, so only alert applies to it; remove delay",
    ),
    "pause-with-backoff": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 131042}
            action: pause
            backoff: {initial: 1m}
        """,
        6,
        "remove backoff",
    ),
    "example-bare-number": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            examples: [470]
        """,
        6,
        'got 470 (a number), expected text; put it in quotes, as "470"',
    ),
    "example-bare-on": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            examples:
              - "(#470) fine"
              - on
        """,
        8,
        "got the bare word 'on'",
    ),
    "example-unknown-key": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            examples:
              - {reason: "", cod: 470}
        """,
        7,
        "unknown key 'cod' in examples in rule 'a'; did you mean 'code'?",
    ),
    "example-empty": (
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            examples:
              - {reason: ""}
        """,
        7,
        "the example has empty text and no code",
    ),
    "description-number": (
        """
        version: 1
        rules:
          - name: a
            description: 12
            match: {code: 470}
            action: retry
        """,
        4,
        "got 12 (a number), expected text",
    ),
}


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED.values(), ids=MALFORMED.keys())
def test_load_rules_malformed_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert caught.value.line == line, str(caught.value)


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED.values(), ids=MALFORMED.keys())
def test_load_rules_malformed_message(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert fragment in caught.value.message


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED.values(), ids=MALFORMED.keys())
def test_load_rules_malformed_names_file(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert str(caught.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED.values(), ids=MALFORMED.keys())
def test_check_rules_malformed_reports(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)

    errors = check_rules(path)

    assert any(e.line == line and fragment in e.message for e in errors), errors


def test_load_rules_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(RulesError, match="cannot read the file: No such file") as caught:
        load_rules(path)

    assert caught.value.path == path


def test_load_rules_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"version: 1\nrules:\n  - name: caf\xe9\n")

    with pytest.raises(RulesError, match="invalid UTF-8 at byte 31") as caught:
        load_rules(path)

    assert caught.value.line == 3


def test_load_rules_raises_first_error_by_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retyr
          - name: B
            match: {code: 471}
            action: retry
        """,
    )

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert caught.value.line == 5


def test_check_rules_reports_every_load_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retyr
          - name: B
            match: {code: 471}
            action: retry
          - name: a
            match: {regex: "("}
            action: retry
        """,
    )

    errors = check_rules(path)

    assert [e.line for e in errors] == [5, 6, 9, 10]


def test_check_rules_valid_file(tmp_path: Path) -> None:
    assert check_rules(write(tmp_path, VALID)) == []


def test_load_rules_valid_file(tmp_path: Path) -> None:
    ruleset = load_rules(write(tmp_path, VALID))

    assert [rule.name for rule in ruleset.rules] == ["first"]


def test_load_rules_quoted_yes_is_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: "yes"
            match: {equals: "no"}
            action: retry
            examples: ["No"]
        """,
    )

    assert check_rules(path) == []


def test_load_rules_block_scalar_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            description: |
              yes
            match: {contains: x}
            action: retry
        """,
    )

    assert load_rules(path).rules[0].description == "yes\n"


def test_load_rules_runs_no_examples(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: retry
            examples: ["does not match"]
        """,
    )

    assert load_rules(path).rules[0].examples[0].text == "does not match"


def test_load_rules_structured_example(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: permanent
            examples: [{reason: "", code: 470}]
        """,
    )

    assert check_rules(path) == []


EXAMPLES = """
version: 1
rules:
  - name: broad
    match: {contains: "unavailable"}
    action: retry
    examples: ["Service unavailable"]
  - name: narrow
    match: {code: 131016}
    action: retry
    examples:
      - "(#131016) fine"
      - "Service temporarily unavailable"
      - "nothing at all"
      - "(#131000) other code"
  - name: other
    match: {code: 131000}
    action: retry
"""


def test_check_rules_example_matching_earlier_rule(tmp_path: Path) -> None:
    errors = check_rules(write(tmp_path, EXAMPLES))

    assert errors[0].line == 12
    assert errors[0].message == (
        "example 'Service temporarily unavailable' of rule 'narrow' is matched first by the"
        " earlier rule 'broad' (line 3); narrow 'broad', move 'narrow' above it, or change"
        " the example"
    )


def test_check_rules_example_matching_no_rule(tmp_path: Path) -> None:
    errors = check_rules(write(tmp_path, EXAMPLES))

    assert errors[1].line == 13
    assert errors[1].message == (
        "example 'nothing at all' of rule 'narrow' matches no rule; change the example or"
        " the rule's match"
    )


def test_check_rules_example_matching_later_rule(tmp_path: Path) -> None:
    errors = check_rules(write(tmp_path, EXAMPLES))

    assert errors[2].line == 14
    assert "the later rule 'other' (line 15) matches it instead" in errors[2].message


def test_check_rules_example_error_count(tmp_path: Path) -> None:
    assert len(check_rules(write(tmp_path, EXAMPLES))) == 3


def test_check_rules_structured_example_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: a
            match: {code: 470}
            action: permanent
            examples: [{reason: "Window closed", code: 471}]
        """,
    )

    [error] = check_rules(path)

    assert error.message.startswith("example 'Window closed' (code 471) of rule 'a'")


UNREACHABLE = {
    "contains-substring": (
        """
        - {name: early, match: {contains: "unavailable"}, action: retry}
        - {name: late, match: {contains: "temporarily unavailable"}, action: retry}
        """,
        "early",
    ),
    "contains-case": (
        """
        - {name: early, match: {contains: "Unavailable"}, action: retry}
        - name: late
          match: {contains: ["TEMPORARILY UNAVAILABLE", "unavailable now"]}
          action: retry
        """,
        "early",
    ),
    "equals-containing": (
        """
        - {name: early, match: {contains: "unavailable"}, action: retry}
        - {name: late, match: {equals: "Service unavailable"}, action: retry}
        """,
        "early",
    ),
    "equals-same": (
        """
        - {name: early, match: {equals: "Service unavailable"}, action: retry}
        - {name: late, match: {equals: "  SERVICE UNAVAILABLE "}, action: retry}
        """,
        "early",
    ),
    "code-superset": (
        """
        - {name: early, match: {code: [131026, 131047, 470]}, action: permanent}
        - {name: late, match: {code: [470, 131026]}, action: permanent}
        """,
        "early",
    ),
    "code-and-text-after-code": (
        """
        - {name: early, match: {code: 470}, action: permanent}
        - {name: late, match: {code: 470, contains: "window"}, action: permanent}
        """,
        "early",
    ),
    "regex-dot-star": (
        """
        - {name: early, match: {regex: ".*"}, action: retry}
        - {name: late, match: {code: 470}, action: permanent}
        """,
        "early",
    ),
    "regex-optional": (
        """
        - {name: early, match: {regex: "x?"}, action: retry}
        - {name: late, match: {regex: "anything"}, action: permanent}
        """,
        "early",
    ),
    "regex-dot-before-text": (
        """
        - {name: early, match: {regex: "."}, action: retry}
        - {name: late, match: {contains: "window"}, action: permanent}
        """,
        "early",
    ),
    "regex-same": (
        """
        - {name: early, match: {regex: "rate ?limit"}, action: retry}
        - {name: late, match: {regex: "rate ?limit", code: 4}, action: retry}
        """,
        "early",
    ),
}


def rules_file(tmp_path: Path, rules: str) -> Path:
    body = textwrap.indent(textwrap.dedent(rules).strip("\n"), "  ")
    return write(tmp_path, "version: 1\nrules:\n" + body + "\n")


@pytest.mark.parametrize(("rules", "earlier"), UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_check_rules_unreachable(tmp_path: Path, rules: str, earlier: str) -> None:
    [error] = check_rules(rules_file(tmp_path, rules))

    assert error.line == 4
    assert error.message == (
        f"rule 'late' can never match: every reason it matches is matched first by the"
        f" earlier rule '{earlier}' (line 3); remove it or move it above them"
    )


def test_check_rules_unreachable_by_two_rules(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        """
        - {name: one, match: {code: 470}, action: permanent}
        - {name: two, match: {contains: "window closed"}, action: permanent}
        - name: late
          match: [{code: 470}, {equals: "The window closed."}]
          action: permanent
        """,
    )

    [error] = check_rules(path)

    assert error.line == 5
    assert "earlier rules 'one' (line 3), 'two' (line 4)" in error.message


REACHABLE = {
    "narrower-earlier": (
        """
        - {name: early, match: {contains: "temporarily unavailable"}, action: retry}
        - {name: late, match: {contains: "unavailable"}, action: retry}
        """
    ),
    "earlier-needs-more": (
        """
        - {name: early, match: {code: 470, contains: "window"}, action: permanent}
        - {name: late, match: {code: 470}, action: permanent}
        """
    ),
    "code-not-subset": (
        """
        - {name: early, match: {code: [470, 471]}, action: permanent}
        - {name: late, match: {code: [471, 472]}, action: permanent}
        """
    ),
    "contains-vs-code": (
        """
        - {name: early, match: {contains: "470"}, action: permanent}
        - {name: late, match: {code: 470}, action: permanent}
        """
    ),
    "dot-vs-code": (
        """
        - {name: early, match: {regex: "."}, action: retry}
        - {name: late, match: {code: 470}, action: permanent}
        """
    ),
    "anchored-regex": (
        """
        - {name: early, match: {regex: "^$"}, action: retry}
        - {name: late, match: {contains: "x"}, action: permanent}
        """
    ),
    "one-alternative-free": (
        """
        - {name: early, match: {code: 470}, action: permanent}
        - name: late
          match: [{code: 470}, {contains: "window"}]
          action: permanent
        """
    ),
    "different-regex": (
        """
        - {name: early, match: {regex: "rate limit"}, action: retry}
        - {name: late, match: {regex: "rate ?limit"}, action: retry}
        """
    ),
}


@pytest.mark.parametrize("rules", REACHABLE.values(), ids=REACHABLE.keys())
def test_check_rules_reachable(tmp_path: Path, rules: str) -> None:
    assert check_rules(rules_file(tmp_path, rules)) == []


def test_shipped_rules_pass_check() -> None:
    assert check_rules(SHIPPED_RULES) == []


def test_shipped_rules_schema_comment_first() -> None:
    first = SHIPPED_RULES.read_text(encoding="utf-8").splitlines()[0]

    assert first == "# yaml-language-server: $schema=./rules.schema.json"


def test_shipped_rules_every_rule_has_examples() -> None:
    ruleset = load_rules(SHIPPED_RULES)

    assert [rule.name for rule in ruleset.rules if not rule.examples] == []


def test_shipped_rules_every_rule_has_description() -> None:
    ruleset = load_rules(SHIPPED_RULES)

    assert [rule.name for rule in ruleset.rules if not rule.description] == []


def test_shipped_rules_defaults() -> None:
    ruleset = load_rules(SHIPPED_RULES)

    assert ruleset.default_action == "retry"
    assert ruleset.default_policy.max_attempts == 1
    assert ruleset.default_policy.backoff_initial_s == 30.0
    assert ruleset.default_policy.backoff_max_s == 1800.0


def test_schema_file_matches_models() -> None:
    on_disk = json.loads(SHIPPED_SCHEMA.read_text(encoding="utf-8"))

    assert on_disk == rules_json_schema(), (
        "config/rules.schema.json is stale; regenerate it with"
        " python -m retrier.rulesfile --schema > config/rules.schema.json"
    )


def test_schema_forbids_unknown_keys() -> None:
    schema = rules_json_schema()

    assert schema["additionalProperties"] is False
    assert all(d["additionalProperties"] is False for d in schema["$defs"].values())


def test_schema_main_prints_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == rules_json_schema()


def test_main_check_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "version: 2\nrules: []\n")

    assert main(["--check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:1: invalid version: got 2 (a number), expected 1, the only version this"
        " retrier reads\n"
    )


def test_check_rules_bad_regex_writes_nothing_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = rules_file(tmp_path, "- {name: a, match: {regex: '(a'}, action: retry}")

    check_rules(path)

    assert capfd.readouterr().err == ""


def test_load_rules_merge_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - &base
            name: first
            match: {code: 131056}
            action: retry
            max_attempts: 4
          - <<: *base
            name: second
            match: {code: 131057}
        """,
    )

    assert load_rules(path).rules[1].policy.max_attempts == 4


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nrules: !custom [x]\n",
        'version: 1\nrules: !!python/object/apply:os.system ["echo unsafe"]\n',
        "version: 1\nrules:\n- {<<: {name: a}}\n",
    ],
)
def test_tags_and_flow_merges_reported_by_line(text: str, tmp_path: Path) -> None:
    """YAML tags and merge keys in flow style are reported with a line, not a crash."""
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    errors = check_rules(path)
    assert errors
    assert all(error.line is not None for error in errors)


def test_duration_over_six_days_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\ndefaults:\n  delay: 30d\nrules: []\n")
    errors = check_rules(path)
    assert [error.line for error in errors] == [3]
    assert "at most 6d" in errors[0].message
