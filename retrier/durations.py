"""Durations as the rules file writes them: a number followed by a unit.

``30s``, ``5m``, ``1h`` and ``2d`` are seconds, minutes, hours and days. A
decimal number such as ``1.5h`` is allowed. A bare number is rejected, because
readers of the file cannot tell whether ``30`` means seconds or minutes.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

#: Seconds per unit letter.
UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: Description of a valid duration, for error messages.
DURATION_HINT = "a number followed by s, m, h or d, such as 30s or 5m"

#: JSON-schema pattern of a duration; it mirrors the parser below.
DURATION_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?[smhd]\s*$"

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Parse a duration such as ``30s``, ``5m``, ``1h``, ``2d`` or ``1.5h`` into seconds.

    Surrounding whitespace is ignored. Zero (``0s``) is valid.

    Raises:
        ValueError: ``text`` is not a non-negative number followed by one of the
            units s, m, h or d. The message names the value and the expected form.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"got {text!r}, expected {DURATION_HINT}")

    number, unit = match.groups()
    return float(number) * UNIT_SECONDS[unit]


def format_duration(seconds: float) -> str:
    """Format ``seconds`` in the largest unit that divides it exactly, such as ``30m``.

    Fractions of a second are written in seconds, rounded to milliseconds
    (``6.5s``), so the result parses back with :func:`parse_duration`.
    """
    for unit in ("d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"

    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
