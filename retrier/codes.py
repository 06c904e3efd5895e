"""Error codes found in the text of a failure reason.

Meta advises branching on the numeric error code rather than on its title,
because titles change and one code arrives with several texts. In a free-text
reason the code appears in Graph's ``(#131056)`` form or as a bare number, and
the same text may carry phone numbers, message ids, dates and times, so
:func:`extract_codes` takes only the numbers that cannot be any of those.

The text is cut into *digit runs*: maximal stretches of digit groups joined by
the separators that phone numbers, dates and decimals use (space, ``-``, ``.``,
``(``, ``)``, ``+``, ``:`` and ``/``). A run yields a code only when it is a
single digit group, so ``+1 555 123 4567``, ``555-123-4567``, ``2026-04-24``,
``10:19:02`` and ``1.5`` yield nothing, while in ``error 131026 at 10:19`` the
word ``at`` ends the run and 131026 is taken. Graph's ``(#131056)`` form is
taken wherever it appears, because the brackets delimit it.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

#: Digit counts of a code written as a bare number. Shorter numbers are too
#: common in prose ("24 hours") and longer ones are ids or phone numbers.
MIN_BARE_DIGITS = 3
MAX_BARE_DIGITS = 6

#: Maximum digits of a code written after ``#``, as in ``(#10)``.
MAX_HASH_DIGITS = 6

_DIGIT = re.compile(r"[0-9]")

# Graph's (#N) form first, because its brackets delimit it wherever it appears;
# otherwise a digit run: digit groups joined by the separators listed above.
_TOKEN = re.compile(r"\(#(0|[1-9][0-9]{0,5})\)|[0-9]+(?:[ \-.()+:/]+[0-9]+)*")

# A separator that glues a number to an adjacent word, as in ``msg-1234``,
# ``v1.123`` or ``wamid.123``; ``:`` is not one of them, so ``code:131026`` counts.
_GLUE = frozenset("-./")


def extract_codes(text: str) -> tuple[int, ...]:
    """Extract the error codes written in ``text``, in order of appearance, without repeats.

    A code is Graph's ``(#N)`` form (1 to 6 digits, as in ``(#131056)`` or
    ``(#10)``), or a single group of digits written after ``#`` (1 to 6 digits)
    or on its own (3 to 6 digits, as in ``error 131026``). Apart from the
    ``(#N)`` form, a group is never a code when it:

    - touches another digit group through a separator (phone numbers, dates,
      times, decimals, version numbers);
    - follows ``+`` (international phone numbers);
    - touches a letter or ``_``, directly or through ``-``, ``.`` or ``/``
      (ids such as ``id3851``, ``abc_1234`` or ``msg-1234``);
    - starts with ``0`` and has more than one digit;
    - has more digits than the limit (message ids such as ``3851827``).

    Runs in linear time in the length of ``text``.
    """
    if _DIGIT.search(text) is None:
        return ()  # most reasons carry no digit at all

    codes: dict[int, None] = {}  # a dict keeps the order of appearance without repeats
    for token in _TOKEN.finditer(text):
        graph_code = token.group(1)
        if graph_code is not None:
            codes[int(graph_code)] = None
            continue

        digits = token.group()
        if len(digits) > MAX_HASH_DIGITS or not digits.isdigit():
            continue  # too long, or several groups: a phone number, date, time or decimal

        start, end = token.span()
        if len(digits) < MIN_BARE_DIGITS and (start == 0 or text[start - 1] != "#"):
            continue  # a short number that is not written as #N
        code = _code_of_group(text, digits, start, end)
        if code is not None:
            codes[code] = None

    return tuple(codes)


def _code_of_group(text: str, digits: str, start: int, end: int) -> int | None:
    if len(digits) > 1 and digits[0] == "0":
        return None
    if _glued_after(text, end):
        return None

    before = text[start - 1] if start > 0 else ""
    if before == "#":
        return int(digits) if len(digits) <= MAX_HASH_DIGITS else None
    if before == "+" or _is_word_char(before):
        return None
    if before in _GLUE and start >= 2 and _is_word_char(text[start - 2]):
        return None

    if MIN_BARE_DIGITS <= len(digits) <= MAX_BARE_DIGITS:
        return int(digits)
    return None


def _glued_after(text: str, end: int) -> bool:
    after = text[end] if end < len(text) else ""
    if _is_word_char(after):
        return True
    return after in _GLUE and end + 1 < len(text) and _is_word_char(text[end + 1])


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"
