"""Nothing the suite logged or sent to Sentry holds a secret or a full phone number.

Runs last (conftest moves it there) and reads every log line, every raw log
field, every Sentry envelope and every subprocess output the other tests
captured.
"""

from __future__ import annotations

import re

from tests.conftest import API_KEY, CAPTURED, HOOK_SECRET

# A full international number: "+" and at least eight digits, with optional
# spaces or dashes between them. Masked numbers ("+1555***4321") do not match.
FULL_PHONE = re.compile(r"\+\d(?:[\s-]?\d){7,}")


def test_suite_captured_something() -> None:
    """The check below is only meaningful when the other tests produced output."""
    assert len(CAPTURED.texts) > 100


def test_no_api_key_captured() -> None:
    leaks = [where for where, text in CAPTURED.texts if API_KEY in text]
    assert leaks == []


def test_no_hook_secret_captured() -> None:
    key_part = HOOK_SECRET.removeprefix("whsec_")
    leaks = [where for where, text in CAPTURED.texts if key_part in text]
    assert leaks == []


def test_no_full_phone_number_captured() -> None:
    leaks = [
        (where, match.group())
        for where, text in CAPTURED.texts
        for match in FULL_PHONE.finditer(text)
    ]
    assert leaks == []
