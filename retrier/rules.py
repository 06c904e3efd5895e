"""Rules that classify a failure reason as ``retry``, ``permanent`` or ``pause``.

A :class:`RuleSet` is an ordered tuple of :class:`Rule` objects, built from the
rules file by :func:`retrier.rulesfile.load_rules`. The first rule that matches
a reason decides its action and retry policy. A reason that no rule matches gets
the file's defaults and is reported as unclassified.

A rule's match is one or more :class:`Match` alternatives, of which any one
must match. An alternative matches when every condition it sets is met:

- ``equals``: the whole text, ignoring case and surrounding whitespace;
- ``contains``: any of the given texts, ignoring case;
- ``regex``: an RE2 pattern searched anywhere in the text, ignoring case;
- ``code``: any of the given codes is the reason's structured code or one of the
  codes :func:`extract_codes` takes from its text.

Texts are compared after :meth:`str.casefold`; RE2 applies its own Unicode case
folding, which differs only for a few characters such as ``ß``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retrier.codes import extract_codes
from retrier.durations import format_duration
from retrier.matching import Match, Subject, compile_regex, quote

__all__ = [
    "BUILTIN_POLICY",
    "Action",
    "Classification",
    "Match",
    "Policy",
    "Reason",
    "Rule",
    "RuleSet",
    "compile_regex",
    "extract_codes",
]

logger = logging.getLogger(__name__)

Action = Literal["retry", "permanent", "pause"]

#: Name of the pseudo-rule that unclassified reasons get.
DEFAULT_RULE = "default"

#: Reasons up to this length are cached per rule set; longer ones are rare and
#: would make the cache's memory use unbounded in practice.
CACHE_MAX_TEXT = 1024
CACHE_SIZE = 4096

# Codes listed in an explanation before the rest are only counted.
_CODES_SHOWN = 10


@dataclass(frozen=True)
class Policy:
    """The resend and alert policy that a classification gives; times are seconds."""

    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    delay_s: float
    max_age_s: float | None
    alert: bool


#: The policy for keys that neither a rule nor the file's defaults set. ``alert``
#: here is for ``retry``; permanent and pause rules alert unless they set
#: ``alert: false``.
BUILTIN_POLICY = Policy(
    max_attempts=3,
    backoff_initial_s=30.0,
    backoff_max_s=1800.0,
    delay_s=0.0,
    max_age_s=None,
    alert=False,
)


@dataclass(frozen=True)
class Reason:
    """A failure reason as Octopods reported it."""

    text: str
    code: int | None = None


@dataclass(frozen=True)
class Classification:
    """The outcome of classifying one reason."""

    rule: str
    action: Action
    policy: Policy
    matched: bool
    explanation: str


@dataclass(frozen=True)
class Rule:
    """A named match with the action and policy it gives.

    ``line`` is the 1-based line of the rule in its file, or None for a rule
    built in code.
    """

    name: str
    match: tuple[Match, ...]
    action: Action
    policy: Policy
    description: str = ""
    examples: tuple[Reason, ...] = ()
    line: int | None = None
    # Codes one of which the reason must carry, when every alternative needs a
    # code, so that a rule set can skip the rule for reasons without them.
    code_gate: frozenset[int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError(f"rule {self.name!r} has no match")
        gate: frozenset[int] | None = None
        if all(alt.codes for alt in self.match):
            gate = frozenset().union(*(alt.codes for alt in self.match))
        object.__setattr__(self, "code_gate", gate)


@dataclass(frozen=True, eq=False)
class RuleSet:
    """An ordered, immutable set of rules with the defaults for unmatched reasons.

    ``digest`` is the first 12 hex digits of the SHA-256 of the file's bytes.
    Classifications of short reasons are cached, which is safe because nothing
    in a rule set changes after it is built.
    """

    path: Path
    version: int
    digest: str
    rules: tuple[Rule, ...]
    default_action: Action = "retry"
    default_policy: Policy = BUILTIN_POLICY
    _cached: Any = field(init=False, repr=False)
    # Indexes of the rules that need no code, and for each code the indexes of
    # the rules gated on it: a reason is tested against the first group and
    # the groups of its own codes only.
    _ungated: tuple[int, ...] = field(init=False, repr=False)
    _gated_by_code: dict[int, tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ungated = []
        gated_by_code: dict[int, list[int]] = {}
        for index, rule in enumerate(self.rules):
            if rule.code_gate is None:
                ungated.append(index)
                continue
            for code in rule.code_gate:
                gated_by_code.setdefault(code, []).append(index)

        object.__setattr__(self, "_ungated", tuple(ungated))
        object.__setattr__(
            self, "_gated_by_code", {code: tuple(found) for code, found in gated_by_code.items()}
        )
        object.__setattr__(self, "_cached", functools.lru_cache(CACHE_SIZE)(self._classify))

    def rule_named(self, name: str) -> Rule | None:
        """Return the rule called ``name``, or None when there is none."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def policy_for(self, name: str) -> Policy:
        """Return the policy of the rule called ``name``, or the defaults' when there is none.

        A rule removed by a later edit of the file gets the defaults' policy.
        """
        if name != DEFAULT_RULE:
            rule = self.rule_named(name)
            if rule is not None:
                return rule.policy
        return self.default_policy

    def classify(self, reason: Reason) -> Classification:
        """Classify ``reason`` by the first rule that matches it, or by the defaults.

        Runs in time linear in the text's length, because regexes run on RE2 and
        codes are taken in one scan.
        """
        if len(reason.text) <= CACHE_MAX_TEXT:
            result: Classification = self._cached(reason)
            return result
        return self._classify(reason)

    def _classify(self, reason: Reason) -> Classification:
        subject = Subject.of(reason.text, reason.code)

        candidates = self._ungated
        if subject.codes:
            gated = [i for code in subject.codes for i in self._gated_by_code.get(code, ())]
            if gated:
                candidates = tuple(sorted({*candidates, *gated}))

        for index in candidates:
            rule = self.rules[index]
            for alternative in rule.match:
                if alternative.matches(subject):
                    met, _ = alternative.describe(subject)
                    explanation = "Matched " + " and ".join(met) + "."
                    return Classification(rule.name, rule.action, rule.policy, True, explanation)

        return Classification(
            DEFAULT_RULE,
            self.default_action,
            self.default_policy,
            False,
            _no_match_sentence(subject),
        )

    def explain(self, reason: Reason) -> str:
        """Describe in several lines how ``reason`` is classified and why.

        Lists the reason and its codes, the matching rule with its file line,
        the action and policy, and earlier rules that matched in part.
        """
        subject = Subject.of(reason.text, reason.code)
        result = self._classify(reason)
        rule = self.rule_named(result.rule) if result.matched else None

        lines = [f"Reason: {quote(reason.text)}", f"Codes: {_codes_line(subject)}"]
        if rule is None:
            lines.append("Rule: none matched, so the defaults apply (unclassified)")
        else:
            lines.append(f"Rule: {rule.name} ({self._where(rule)})")
        lines.append(f"Action: {result.action}")
        lines.append(f"Policy: {_policy_line(result.action, result.policy)}")
        lines.append(f"Why: {result.explanation}")
        if rule is not None and rule.description:
            lines.append(f"Description: {' '.join(rule.description.split())}")

        near = self._near_misses(subject, stop=rule)
        if near:
            lines.append("Earlier rules that matched in part:")
            lines.extend(f"  {line}" for line in near)
        return "\n".join(lines)

    def _where(self, rule: Rule) -> str:
        return f"{self.path}:{rule.line}" if rule.line is not None else str(self.path)

    def _near_misses(self, subject: Subject, stop: Rule | None) -> list[str]:
        found = []
        for rule in self.rules:
            if rule is stop:
                break
            for alternative in rule.match:
                met, unmet = alternative.describe(subject)
                if met and unmet:
                    found.append(
                        f"{rule.name} ({self._where(rule)}): {' and '.join(met)} matched,"
                        f" but {' and '.join(unmet)} did not"
                    )
        return found


def _no_match_sentence(subject: Subject) -> str:
    if not subject.text.strip() and subject.code is None:
        return "No rule matched: the reason is empty and carries no code."
    return f"No rule matched, so the defaults apply (codes found: {_codes_line(subject)})."


def _codes_line(subject: Subject) -> str:
    parts = []
    if subject.code is not None:
        parts.append(f"{subject.code} (structured)")
    parts.extend(f"{code} (in the text)" for code in subject.text_codes if code != subject.code)
    if len(parts) > _CODES_SHOWN:
        parts[_CODES_SHOWN:] = [f"and {len(parts) - _CODES_SHOWN} more"]
    return ", ".join(parts) if parts else "none"


def _policy_line(action: Action, policy: Policy) -> str:
    alert = "yes" if policy.alert else "no"
    if action == "permanent":
        return f"alert={alert}; nothing is resent"
    if action == "pause":
        return f"alert={alert}; all resends stop until an operator runs `retrier resume`"

    max_age = "RETRIER_MAX_MESSAGE_AGE"
    if policy.max_age_s is not None:
        max_age = format_duration(policy.max_age_s)
    backoff = (
        f"{format_duration(policy.backoff_initial_s)}..{format_duration(policy.backoff_max_s)}"
    )
    return (
        f"max_attempts={policy.max_attempts}, backoff={backoff},"
        f" delay={format_duration(policy.delay_s)}, max_age={max_age}, alert={alert}"
    )
