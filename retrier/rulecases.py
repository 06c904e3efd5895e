"""Testing a rule set against a cases file: reasons with the rule and action each must get.

A cases file is a YAML list of mappings. Each has ``reason`` (text, which may be
empty), an optional ``code`` (the structured code), ``rule`` (a rule name, or
``default`` for reasons no rule should match) and ``action``::

    - reason: "Recipient is not a WhatsApp user."
      rule: not-a-whatsapp-user
      action: permanent
    - {reason: "", code: 470, rule: messaging-window-closed, action: permanent}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from retrier.errors import RulesError
from retrier.rules import Classification, Reason, RuleSet
from retrier.rulesmodels import CaseModel, describe_value
from retrier.yamlsource import locate, read_yaml, translate_errors

logger = logging.getLogger(__name__)

# Maximum length of a reason quoted in a report.
_REASON_MAX = 120

_CASES = TypeAdapter(list[CaseModel])
_CASE_MODELS: dict[str | None, type[BaseModel]] = {None: CaseModel}


@dataclass(frozen=True)
class CaseFailure:
    """A case whose reason did not get the expected rule and action."""

    path: Path
    line: int
    reason: Reason
    expected_rule: str
    expected_action: str
    got: Classification
    rule_exists: bool

    def render(self) -> str:
        """Render the failure as a few lines: where, the reason, expected and got."""
        shown = json.dumps(_shorten(self.reason.text), ensure_ascii=False)
        if self.reason.code is not None:
            shown += f" (code {self.reason.code})"

        got = f"rule={self.got.rule} action={self.got.action}"
        if not self.got.matched:
            got += " (unclassified)"

        lines = [
            f"{self.path}:{self.line}: {shown}",
            f"  expected rule={self.expected_rule} action={self.expected_action}",
            f"  got      {got}",
        ]
        if not self.rule_exists:
            lines.append(f"  note: the rules file has no rule named {self.expected_rule!r}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CaseReport:
    """The outcome of running a cases file: the failures out of ``total`` cases."""

    path: Path
    total: int
    failures: list[CaseFailure]

    @property
    def passed(self) -> bool:
        """Whether every case got its expected rule and action."""
        return not self.failures

    def render(self) -> str:
        """Render each failure, then a summary line."""
        blocks = [failure.render() for failure in self.failures]
        if self.failures:
            blocks.append(f"{len(self.failures)} of {self.total} cases failed")
        else:
            blocks.append(f"all {self.total} cases passed")
        return "\n".join(blocks)


def run_cases(ruleset: RuleSet, cases_path: Path | str) -> CaseReport:
    """Classify each case of the cases file with ``ruleset`` and compare rule and action.

    Raises:
        RulesError: the cases file cannot be read, is not valid YAML, or has an
            invalid case, such as one with an unknown key. The error is the first
            by line.
    """
    path = Path(cases_path)
    document = read_yaml(path)
    if not isinstance(document.data, list) or not document.data:
        raise RulesError(
            f"the file contains {describe_value(document.data)}, expected a non-empty list of"
            " cases",
            path=path,
            line=1,
        )

    try:
        cases = _CASES.validate_python(document.data)
    except ValidationError as exc:
        errors = translate_errors(exc, document.data, path, models=_CASE_MODELS, item_noun="case")
        raise errors[0] from None

    known = {rule.name for rule in ruleset.rules} | {"default"}
    failures = []
    for index, case in enumerate(cases):
        reason = Reason(text=case.reason, code=case.code)
        got = ruleset.classify(reason)
        if got.rule == case.rule and got.action == case.action:
            continue
        failures.append(
            CaseFailure(
                path=path,
                line=locate(document.data, (index,), "case").line,
                reason=reason,
                expected_rule=case.rule,
                expected_action=case.action,
                got=got,
                rule_exists=case.rule in known,
            )
        )

    logger.debug(
        "rule cases run",
        extra={"path": str(path), "total": len(cases), "failed": len(failures)},
    )
    return CaseReport(path=path, total=len(cases), failures=failures)


def _shorten(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"
