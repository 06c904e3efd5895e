"""Finding rules that can never match because earlier rules always match first.

The check is sound but incomplete: it reports a rule only when every one of its
match alternatives is covered by an alternative of an earlier rule, by one of
these certain implications (texts compared after case folding):

- earlier ``code`` set includes the later ``code`` set;
- earlier ``contains`` text occurs in every later ``contains`` text, or in the
  later ``equals`` text;
- earlier ``equals`` is the same text as the later ``equals``;
- earlier ``regex`` is the same pattern as the later one, matches every text
  (it matches the empty text and has no anchors or word boundaries), or is
  ``.`` or ``.+``, which matches every text that ``contains`` or ``equals`` can.

An earlier alternative covers a later one when each condition of the earlier is
implied by some condition of the later. Anything else is left unreported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from retrier.rules import Match, Rule, compile_regex

logger = logging.getLogger(__name__)

# Regex syntax that makes a match depend on its position: anchors, word boundaries.
_ASSERTIONS = re.compile(r"[\^$]|\\[bBAzZ]")

# Patterns that match any text with one character other than a newline.
_ANY_CHARACTER = re.compile(r"(?:\(\?s\))?\.\+?")


@dataclass(frozen=True)
class Unreachable:
    """A rule that cannot match, and the earlier rules that match its reasons first."""

    rule: Rule
    covered_by: tuple[Rule, ...]


def find_unreachable(rules: tuple[Rule, ...]) -> list[Unreachable]:
    """Find the rules that earlier rules always match first, in file order."""
    found = []
    for index, rule in enumerate(rules):
        earlier = rules[:index]
        covering: list[Rule] = []
        for alternative in rule.match:
            cover = _first_cover(earlier, alternative)
            if cover is None:
                break
            if cover not in covering:
                covering.append(cover)
        else:
            if covering:
                found.append(Unreachable(rule=rule, covered_by=tuple(covering)))
    return found


def _first_cover(earlier: tuple[Rule, ...], later: Match) -> Rule | None:
    for rule in earlier:
        if any(covers(alternative, later) for alternative in rule.match):
            return rule
    return None


def covers(earlier: Match, later: Match) -> bool:
    """Return whether ``earlier`` certainly matches every reason that ``later`` matches."""
    if earlier.codes and not (later.codes and later.codes <= earlier.codes):
        return False
    if earlier.equals is not None and not _same_equals(earlier, later):
        return False
    if earlier.contains and not _contains_implied(earlier, later):
        return False
    return earlier.regex is None or _regex_implied(earlier.regex, later)


def _fold(text: str) -> str:
    return text.strip().casefold()


def _same_equals(earlier: Match, later: Match) -> bool:
    assert earlier.equals is not None
    return later.equals is not None and _fold(later.equals) == _fold(earlier.equals)


def _contains_implied(earlier: Match, later: Match) -> bool:
    needles = [value.casefold() for value in earlier.contains]

    if later.equals is not None:
        whole = _fold(later.equals)
        if any(needle in whole for needle in needles):
            return True
    if later.contains:
        return all(
            any(needle in value.casefold() for needle in needles) for value in later.contains
        )
    return False


def _regex_implied(pattern: str, later: Match) -> bool:
    if pattern == later.regex or matches_every_text(pattern):
        return True
    # A contains or equals value has a character other than whitespace (blank
    # values are rejected), so ``.`` finds something to match in such a text.
    return _ANY_CHARACTER.fullmatch(pattern) is not None and (
        later.equals is not None or bool(later.contains)
    )


def matches_every_text(pattern: str) -> bool:
    """Return whether the RE2 ``pattern`` certainly matches every text, such as ``.*``.

    A pattern without anchors or word boundaries that matches the empty text
    matches an empty span at the start of any text. Patterns with such
    assertions are not analysed, so some that match everything are missed.
    """
    if _ASSERTIONS.search(pattern):
        return False
    try:
        return compile_regex(pattern).search("") is not None
    except ValueError:
        return False
