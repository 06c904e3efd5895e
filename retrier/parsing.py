"""Lenient readers for values in JSON written by other systems (Octopods, the hook)."""

from __future__ import annotations

from typing import Any


def positive_int(raw: Any) -> int | None:
    """Return ``raw`` as a positive int when it is one or its ASCII decimal text, else None.

    Booleans, floats, zero, negatives and text such as ``"²"`` (which
    ``str.isdigit`` accepts but ``int`` rejects) all give None.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, str):
        text = raw.strip(" \t\r\n")
        if text.isascii() and text.isdigit():
            value = int(text)
            return value if value > 0 else None
    return None
