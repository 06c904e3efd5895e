"""Loading and checking the rules file, and testing rules against a cases file.

:func:`load_rules` builds a :class:`~retrier.rules.RuleSet` or raises the first
error. :func:`check_rules` is the release-phase check: it lists every error,
including examples that classify to the wrong rule and rules that earlier rules
always match first. :func:`run_cases` is in :mod:`retrier.rulecases`.

Run ``python -m retrier.rulesfile --schema > config/rules.schema.json`` to
regenerate the JSON schema after changing :mod:`retrier.rulesmodels`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from retrier.durations import format_duration
from retrier.errors import RulesError
from retrier.reachability import find_unreachable
from retrier.rulecases import CaseFailure, CaseReport, run_cases
from retrier.rules import BUILTIN_POLICY, Action, Match, Policy, Reason, Rule, RuleSet
from retrier.rulesmodels import (
    BackoffModel,
    DefaultsModel,
    ExampleModel,
    MatchModel,
    PolicyModel,
    RuleModel,
    RulesFileModel,
    rules_json_schema,
)
from retrier.yamlsource import (
    YamlDocument,
    error_order,
    locate,
    read_yaml,
    require_mapping,
    translate_errors,
)

__all__ = [
    "CaseFailure",
    "CaseReport",
    "check_rules",
    "load_rules",
    "rules_json_schema",
    "run_cases",
]

logger = logging.getLogger(__name__)

#: The model that validates the mapping under each key, for unknown-key messages.
RULES_FILE_MODELS: dict[str | None, type[BaseModel]] = {
    None: RulesFileModel,
    "defaults": DefaultsModel,
    "rules": RuleModel,
    "backoff": BackoffModel,
    "match": MatchModel,
    "examples": ExampleModel,
}

_TOP_LEVEL = "a mapping with version, defaults and rules"


@dataclass(frozen=True)
class _Loaded:
    """A rule set with the line of each rule's examples, which only the checks need."""

    ruleset: RuleSet
    example_lines: dict[tuple[str, int], int]


def load_rules(path: Path | str) -> RuleSet:
    """Load and validate the rules file at ``path``.

    Examples are not classified; :func:`check_rules` does that.

    Raises:
        RulesError: the first problem in the file, by line, with the file and line.
    """
    loaded, errors = _load(Path(path))
    if loaded is None:
        raise errors[0]
    return loaded.ruleset


def check_rules(path: Path | str) -> list[RulesError]:
    """Check the rules file at ``path`` and return every error found, or [] when it is valid.

    Returns the load errors when there are any, because rules that do not load
    cannot be run. Otherwise returns each example that does not classify to its
    own rule, then each rule that earlier rules always match first. Never
    raises for a bad file.
    """
    loaded, errors = _load(Path(path))
    if loaded is None:
        return errors

    return _check_examples(loaded) + _check_reachable(loaded.ruleset)


def _load(path: Path) -> tuple[_Loaded | None, list[RulesError]]:
    try:
        document = read_yaml(path)
        tree = require_mapping(document, _TOP_LEVEL)
    except RulesError as exc:
        return None, [exc]

    errors = _duplicate_names(document)
    try:
        model = RulesFileModel.model_validate(tree)
    except ValidationError as exc:
        errors += translate_errors(exc, tree, path, models=RULES_FILE_MODELS, item_noun="rule")
        return None, sorted(errors, key=error_order)

    errors += _policy_errors(document, model)
    if errors:
        return None, sorted(errors, key=error_order)
    return _build(document, model), []


def _duplicate_names(document: YamlDocument) -> list[RulesError]:
    rules = document.data.get("rules")
    if not isinstance(rules, list):
        return []

    errors = []
    first_line: dict[str, int] = {}
    for index, item in enumerate(rules):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        line = locate(document.data, ("rules", index, "name"), "rule").line
        if name in first_line:
            errors.append(
                RulesError(
                    f"duplicate rule name {name!r}; the rule at line {first_line[name]} has it"
                    " already, and names must be unique",
                    path=document.path,
                    line=line,
                )
            )
        else:
            first_line[name] = line
    return errors


def _policy_errors(document: YamlDocument, model: RulesFileModel) -> list[RulesError]:
    # Backoff bounds may come from different levels, so they are compared only
    # once each rule's inherited values are known.
    checked: list[tuple[tuple[str | int, ...], RuleModel | None, str]] = [
        (("defaults",), None, "the defaults")
    ]
    for index, rule in enumerate(model.rules):
        if rule.action == "retry":
            checked.append((("rules", index), rule, f"rule {rule.name!r}"))

    errors = []
    for loc, owner, label in checked:
        policy = _policy(model.defaults, owner, "retry")
        if policy.backoff_initial_s <= policy.backoff_max_s:
            continue
        errors.append(
            RulesError(
                f"invalid backoff in {label}: initial {format_duration(policy.backoff_initial_s)}"
                f" is longer than max {format_duration(policy.backoff_max_s)} (values not set"
                " here are inherited); set initial <= max",
                path=document.path,
                line=locate(document.data, (*loc, "backoff"), "rule").line,
            )
        )
    return errors


def _policy(defaults: DefaultsModel, rule: RuleModel | None, action: Action) -> Policy:
    """Resolve a policy: the rule's keys, then the defaults', then the built-ins."""
    levels: list[PolicyModel] = [rule] if rule is not None else []
    levels.append(defaults)

    def pick(key: str, builtin: Any) -> Any:
        for level in levels:
            value = getattr(level, key)
            if value is not None:
                return value
        return builtin

    def pick_backoff(key: str, builtin: float) -> float:
        for level in levels:
            if level.backoff is not None and getattr(level.backoff, key) is not None:
                return float(getattr(level.backoff, key))
        return builtin

    # alert is not inherited from the defaults: there it decides about
    # unmatched reasons, and its built-in value depends on the action.
    alert = rule.alert if rule is not None else defaults.alert
    return Policy(
        max_attempts=pick("max_attempts", BUILTIN_POLICY.max_attempts),
        backoff_initial_s=pick_backoff("initial", BUILTIN_POLICY.backoff_initial_s),
        backoff_max_s=pick_backoff("max", BUILTIN_POLICY.backoff_max_s),
        delay_s=pick("delay", BUILTIN_POLICY.delay_s),
        max_age_s=pick("max_age", BUILTIN_POLICY.max_age_s),
        alert=alert if alert is not None else action != "retry",
    )


def _build(document: YamlDocument, model: RulesFileModel) -> _Loaded:
    rules = []
    example_lines: dict[tuple[str, int], int] = {}

    for index, item in enumerate(model.rules):
        line = locate(document.data, ("rules", index), "rule").line
        rules.append(
            Rule(
                name=item.name,
                match=tuple(_match(m) for m in item.match),
                action=item.action,
                policy=_policy(model.defaults, item, item.action),
                description=item.description or "",
                examples=tuple(_reason(example) for example in item.examples),
                line=line,
            )
        )
        for number in range(len(item.examples)):
            loc = ("rules", index, "examples", number)
            example_lines[(item.name, number)] = locate(document.data, loc, "rule").line

    default_action = model.defaults.action or "retry"
    ruleset = RuleSet(
        path=document.path,
        version=model.version,
        digest=document.digest,
        rules=tuple(rules),
        default_action=default_action,
        default_policy=_policy(model.defaults, None, default_action),
    )
    return _Loaded(ruleset=ruleset, example_lines=example_lines)


def _match(model: MatchModel) -> Match:
    return Match(
        equals=model.equals,
        contains=tuple(model.contains or ()),
        regex=model.regex,
        codes=frozenset(model.code or ()),
    )


def _reason(model: ExampleModel) -> Reason:
    return Reason(text=model.reason, code=model.code)


def _check_examples(loaded: _Loaded) -> list[RulesError]:
    ruleset = loaded.ruleset
    position = {rule.name: index for index, rule in enumerate(ruleset.rules)}
    errors = []

    for rule in ruleset.rules:
        for number, example in enumerate(rule.examples):
            got = ruleset.classify(example)
            if got.rule == rule.name:
                continue
            errors.append(
                RulesError(
                    _example_message(rule, example, got.rule, position, ruleset),
                    path=ruleset.path,
                    line=loaded.example_lines[(rule.name, number)],
                )
            )
    return errors


def _example_message(
    rule: Rule, example: Reason, got: str, position: dict[str, int], ruleset: RuleSet
) -> str:
    shown = repr(example.text) + (f" (code {example.code})" if example.code is not None else "")
    start = f"example {shown} of rule {rule.name!r}"

    other = ruleset.rule_named(got)
    if other is None:
        return f"{start} matches no rule; change the example or the rule's match"
    if position[got] < position[rule.name]:
        return (
            f"{start} is matched first by the earlier rule {got!r} (line {other.line});"
            f" narrow {got!r}, move {rule.name!r} above it, or change the example"
        )
    return (
        f"{start} does not match it, and the later rule {got!r} (line {other.line}) matches"
        " it instead; change the example or the rule's match"
    )


def _check_reachable(ruleset: RuleSet) -> list[RulesError]:
    errors = []
    for found in find_unreachable(ruleset.rules):
        earlier = ", ".join(f"{r.name!r} (line {r.line})" for r in found.covered_by)
        noun = "rule" if len(found.covered_by) == 1 else "rules"
        errors.append(
            RulesError(
                f"rule {found.rule.name!r} can never match: every reason it matches is matched"
                f" first by the earlier {noun} {earlier}; remove it or move it above them",
                path=ruleset.path,
                line=found.rule.line,
            )
        )
    return errors


def main(argv: list[str] | None = None) -> int:
    """Print the JSON schema (``--schema``) or check a rules file (``--check PATH``)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--schema"]:
        sys.stdout.write(json.dumps(rules_json_schema(), indent=2) + "\n")
        return 0
    if len(args) == 2 and args[0] == "--check":
        errors = check_rules(args[1])
        for error in errors:
            sys.stderr.write(f"{error}\n")
        return 1 if errors else 0

    sys.stderr.write("usage: python -m retrier.rulesfile --schema | --check PATH\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
