"""Matching one failure reason against the conditions of a rule's match.

A :class:`Match` is one alternative of a rule's match. It matches a reason when
every condition it sets is met. Conditions test a :class:`Subject`, the reason
prepared once (case-folded, encoded, codes extracted) for all the rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import re2

from retrier.codes import extract_codes

logger = logging.getLogger(__name__)

# Maximum length of a reason or a regex match quoted in explanations.
QUOTE_MAX = 80


def compile_regex(pattern: str | bytes) -> Any:
    """Compile ``pattern`` with RE2, ignoring case, without logging parse errors.

    RE2 matches in linear time and rejects what cannot be matched that way,
    such as backreferences and lookaround.

    Raises:
        ValueError: RE2 cannot compile the pattern; the message is RE2's.
    """
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # otherwise RE2 writes each parse error to stderr

    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(str(detail)) from None


@dataclass(slots=True)
class Subject:
    """A reason prepared once for all the rules it is tested against."""

    text: str
    encoded: bytes
    folded: str
    stripped: str
    code: int | None
    text_codes: tuple[int, ...]
    codes: frozenset[int]

    @classmethod
    def of(cls, text: str, code: int | None) -> Subject:
        """Prepare a reason's text and structured code."""
        folded = text.casefold()
        text_codes = extract_codes(text)
        codes = frozenset(text_codes)
        if code is not None:
            codes |= {code}
        encoded = text.encode("utf-8", "surrogatepass")
        return cls(text, encoded, folded, folded.strip(), code, text_codes, codes)


@dataclass(frozen=True)
class Match:
    """One alternative of a rule's match, which matches when every condition it sets is met.

    Raises:
        ValueError: no condition is set, or ``regex`` does not compile.
    """

    equals: str | None = None
    contains: tuple[str, ...] = ()
    regex: str | None = None
    codes: frozenset[int] = frozenset()
    _equals_folded: str | None = field(init=False, repr=False, compare=False)
    _contains_folded: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Compiled for UTF-8 bytes: searching bytes skips the wrapper's conversion
    # of offsets, and text with lone surrogates cannot make it raise.
    _compiled: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.equals is None and not self.contains and self.regex is None and not self.codes:
            raise ValueError("a match needs at least one of equals, contains, regex or code")

        equals_folded = None if self.equals is None else self.equals.strip().casefold()
        compiled = None if self.regex is None else compile_regex(self.regex.encode("utf-8"))
        object.__setattr__(self, "_equals_folded", equals_folded)
        object.__setattr__(self, "_contains_folded", tuple(v.casefold() for v in self.contains))
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, subject: Subject) -> bool:
        """Return whether every condition is met for ``subject``, testing cheap ones first."""
        if self.codes and self.codes.isdisjoint(subject.codes):
            return False
        if self._equals_folded is not None and subject.stripped != self._equals_folded:
            return False
        if self._contains_folded and not self._contains_any(subject.folded):
            return False
        return self._compiled is None or self._compiled.search(subject.encoded) is not None

    def _contains_any(self, folded: str) -> bool:
        # A plain loop: any() over a generator is slower on this hot path.
        for value in self._contains_folded:  # noqa: SIM110
            if value in folded:
                return True
        return False

    def describe(self, subject: Subject) -> tuple[list[str], list[str]]:
        """Describe each condition for ``subject``, as the lists of those met and those unmet."""
        met: list[str] = []
        unmet: list[str] = []

        if self.codes:
            _sort_into(met, unmet, *_describe_codes(self.codes, subject))
        if self.equals is not None:
            ok = subject.stripped == self._equals_folded
            _sort_into(met, unmet, ok, f"equals {self.equals!r}")
        if self.contains:
            pairs = zip(self.contains, self._contains_folded, strict=True)
            found = [value for value, folded in pairs if folded in subject.folded]
            text = f"contains {found[0]!r}" if found else f"contains {join_values(self.contains)}"
            _sort_into(met, unmet, bool(found), text)
        if self._compiled is not None:
            hit = self._compiled.search(subject.encoded)
            text = f"regex {self.regex!r}"
            if hit is not None:
                text += f" (on {quote(hit.group().decode('utf-8', 'replace'))})"
            _sort_into(met, unmet, hit is not None, text)

        return met, unmet


def _sort_into(met: list[str], unmet: list[str], ok: bool, text: str) -> None:
    (met if ok else unmet).append(text)


def _describe_codes(codes: frozenset[int], subject: Subject) -> tuple[bool, str]:
    if subject.code is not None and subject.code in codes:
        return True, f"code {subject.code} (the structured code)"
    for code in subject.text_codes:
        if code in codes:
            return True, f"code {code} (found in the text)"
    return False, f"code {join_values(sorted(codes))}"


def join_values(values: Any) -> str:
    """Join the reprs of up to five values with "or", counting the rest."""
    shown = [repr(v) for v in list(values)[:5]]
    more = len(values) - len(shown)
    return " or ".join(shown) + (f" (or {more} more)" if more > 0 else "")


def quote(text: str) -> str:
    """Quote ``text`` for an explanation, shortened to a readable length."""
    if len(text) > QUOTE_MAX:
        text = text[: QUOTE_MAX - 1] + "…"
    return repr(text)
