"""Tests for retrier.redact: masking phone numbers and secrets in text and nested data."""

from __future__ import annotations

from typing import Any

import pytest

from retrier.redact import FILTERED, Redactor, mask_phone, mask_secret

SECRET = "octopods-key-for-redact-tests-8Hn3"


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+15557654321", "+1555***4321"),
        ("+1 555-765-4321", "+1555***4321"),
        ("+1 (555) 765-4321", "+1555***4321"),
        (" +15557654321 ", "+1555***4321"),
        ("15557654321", "1555***4321"),
        ("+447700900123", "+4477***0123"),
        ("+123456789", "+1234***6789"),
        ("+4915123456789012", "+4915***9012"),
    ],
    ids=["e164", "dashes", "brackets", "padded", "no plus", "uk", "nine digits", "long"],
)
def test_mask_phone(phone: str, masked: str) -> None:
    """All but the first four and last four digits are hidden."""
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    "phone", ["+12345678", "12345", "+1", "abc"], ids=["eight", "five", "one", "letters"]
)
def test_mask_phone_short(phone: str) -> None:
    """A number with fewer than nine digits is hidden entirely."""
    assert mask_phone(phone) == "***"


@pytest.mark.parametrize("phone", [None, ""], ids=["none", "empty"])
def test_mask_phone_absent(phone: str | None) -> None:
    assert mask_phone(phone) == ""


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (None, "''"),
        ("", "''"),
        ("short", "'***'"),
        ("exactly8", "'***'"),
        (SECRET, "'octo***'"),
    ],
    ids=["none", "empty", "short", "eight", "long"],
)
def test_mask_secret(value: str | None, masked: str) -> None:
    """A secret shows at most its first four characters, and only when longer than eight."""
    assert mask_secret(value) == masked


def test_redact_secret() -> None:
    text = Redactor([SECRET]).text(f"GET /messages with key {SECRET} failed")

    assert text == f"GET /messages with key {FILTERED} failed"


def test_redact_secret_repeated() -> None:
    text = Redactor([SECRET]).text(f"{SECRET},{SECRET}")

    assert SECRET not in text
    assert text == f"{FILTERED},{FILTERED}"


def test_redact_longest_first() -> None:
    """A secret that contains another is filtered whole, leaving no tail."""
    redactor = Redactor(["abcdef", "abcdef-ghijkl"])

    assert redactor.text("key=abcdef-ghijkl") == f"key={FILTERED}"


@pytest.mark.parametrize("secret", ["abc", "", None], ids=["short", "empty", "none"])
def test_redact_ignores_tiny(secret: str | None) -> None:
    """Secrets under six characters are not registered, because they would mask ordinary words."""
    assert Redactor([secret]).text("abc def") == "abc def"


def test_redact_add_secrets() -> None:
    redactor = Redactor()
    redactor.add_secrets([SECRET])

    assert redactor.text(SECRET) == FILTERED


def test_redact_add_twice() -> None:
    redactor = Redactor([SECRET])
    redactor.add_secrets([SECRET])

    assert redactor.text(SECRET) == FILTERED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sent to +15557654321", "sent to +1555***4321"),
        ("sent to +1 555-765-4321.", "sent to +1555***4321."),
        ("+15557654321,+15551234567", "+1555***4321,+1555***4567"),
        ("(+447700900123)", "(+4477***0123)"),
    ],
    ids=["e164", "dashes", "two", "brackets"],
)
def test_redact_phone(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "message 3851827 failed",
        "sent_at 2026-04-24T10:19:02Z",
        "error code 131026",
        "retry at 1777025942",
    ],
    ids=["message id", "time", "code", "epoch"],
)
def test_redact_keeps_numbers(text: str) -> None:
    """Ids, codes and times, which carry no "+", are left alone."""
    assert Redactor().text(text) == text


def test_redact_data_nested() -> None:
    """Strings inside dicts and lists are redacted at any depth."""
    data = {
        "message": f"key {SECRET}",
        "job": {"phone_number": "+15557654321", "attempts": [f"{SECRET} rejected", 3]},
    }

    assert Redactor([SECRET]).data(data) == {
        "message": f"key {FILTERED}",
        "job": {"phone_number": "+1555***4321", "attempts": [f"{FILTERED} rejected", 3]},
    }


def test_redact_data_tuple() -> None:
    """A tuple comes back as a list of redacted items."""
    assert Redactor([SECRET]).data((SECRET, 1)) == [FILTERED, 1]


@pytest.mark.parametrize("value", [None, 3851827, 1.5, True], ids=repr)
def test_redact_data_scalars(value: Any) -> None:
    assert Redactor([SECRET]).data(value) == value


def test_redact_data_copy() -> None:
    """data() returns a copy and leaves its argument unchanged."""
    original = {"phone_number": "+15557654321"}

    Redactor().data(original)

    assert original == {"phone_number": "+15557654321"}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("(#131026) to 15551234567.", "(#131026) to 1555***4567."),
        ("call 555-123-4567 now", "call 5551***4567 now"),
        ("call (555) 123-4567", "call 5551***4567"),
        ("+1 (555) 765-4321", "+1555***4321"),
    ],
)
def test_phone_shapes_in_text_masked(text: str, masked: str) -> None:
    assert Redactor().text(text) == masked


@pytest.mark.parametrize("text", ["date 2026-04-24", "message 3851827", "at 1796415611.742"])
def test_dates_ids_and_times_kept(text: str) -> None:
    assert Redactor().text(text) == text
