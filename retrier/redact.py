"""Masking of phone numbers and secrets before anything is logged or sent to Sentry."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: Replacement for a secret wherever it appears.
FILTERED = "[Filtered]"

# Three shapes of phone number: an international one, possibly with spaces,
# dashes, dots or brackets between digit groups ("+15557654321",
# "+1 (555) 765-4321"); a bare run of 11 to 15 digits, the length of an E.164
# number written without its "+" (a full stop may end the sentence after it);
# and a North American local one ("555-765-4321", "555.765.4321").
_PHONE_PATTERN = re.compile(
    r"\+\s?\d(?:[\s().-]{0,2}\d){6,16}"
    r"|(?<![\w.])\d{11,15}(?!\w|\.\d)"
    r"|(?<![\w.-])\(?\d{3}\)?[\s.-]\d{3}[.-]\d{4}(?![\w-]|\.\d)"
)


def mask_phone(phone: str | None) -> str:
    """Return ``phone`` with all but its first four and last four digits hidden.

    ``+15557654321`` becomes ``+1555***4321``. Numbers too short to mask that way
    become ``***``, and None becomes the empty string.
    """
    if not phone:
        return ""
    if "***" in phone:
        return phone  # already masked
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 9:
        return "***"
    prefix = "+" if phone.strip().startswith("+") else ""
    return f"{prefix}{digits[:4]}***{digits[-4:]}"


def mask_secret(value: str | None) -> str:
    """Return a form of a secret that is safe to print: its first four characters only."""
    if not value:
        return "''"
    return f"'{value[:4]}***'" if len(value) > 8 else "'***'"


class Redactor:
    """Replaces known secrets and phone numbers in text and in nested data.

    One instance holds the secrets of the running process (the API key, the
    hook secret, the Sentry DSN); phone numbers are found by their shape.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        """Add secrets to hide from now on; empty and very short values are ignored."""
        for secret in secrets:
            # A value of a few characters would mask innocent words everywhere.
            if secret and len(secret) >= 6 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def text(self, value: str) -> str:
        """Return ``value`` with every secret filtered and every phone number masked."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, FILTERED)
        return _PHONE_PATTERN.sub(lambda match: mask_phone(match.group(0)), value)

    def data(self, value: Any) -> Any:
        """Return a copy of nested dicts, lists and strings with :meth:`text` applied."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value


#: The process-wide redactor: settings add the secrets at start-up, and the log
#: formatter and Sentry's ``before_send`` apply it.
redactor = Redactor()
