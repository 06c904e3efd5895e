"""Tests of taking error codes from the text of a failure reason."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrier.rules import extract_codes


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        # Graph's (#code) form, including codes too short to count when bare.
        ("(#131056) (Business Account, Consumer Account) pair rate limit hit", (131056,)),
        ("(#10) Application does not have permission", (10,)),
        ("(#0) Unknown", (0,)),
        ("Error #131026", (131026,)),
        ("(#131056).", (131056,)),
        # Bare numbers of 3 to 6 digits.
        ("error 131026 at 10:19", (131026,)),
        ("Error code: 131026 - Message undeliverable", (131026,)),
        ("code:131026", (131026,)),
        ("Twilio error 63016: outside the window", (63016,)),
        ("131026", (131026,)),
        ("Failed with 470.", (470,)),
        ("[131047] Re-engagement message", (131047,)),
        ("131056 and (#131056) again", (131056,)),
        ("first 470 then 131026", (470, 131026)),
        ("(#131026) then error 131026", (131026,)),
        # Too short when bare.
        ("more than 24 hours have passed", ()),
        ("(#1234567) too long", ()),
        # Phone numbers.
        ("Recipient +1 555 123 4567 is not a WhatsApp user", ()),
        ("to +15551234567 failed", ()),
        ("to (555) 123-4567 failed", ()),
        ("to 555-123-4567 failed", ()),
        ("to 555.123.4567 failed", ()),
        ("to +44 20 7946 0958 failed", ()),
        ("to +91-98765-43210 failed", ()),
        ("to +12345 failed", ()),
        ("sent to 5551234567", ()),
        # Ids.
        ("message 3851827 failed", ()),
        ("wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QjA1", ()),
        ("id3851 failed", ()),
        ("abc_1234 failed", ()),
        ("1234abc failed", ()),
        ("msg-1234 failed", ()),
        ("wamid.123456 failed", ()),
        ("file 131026.pdf", ()),
        # Dates, times, decimals, versions, leading zeros.
        ("at 2026-04-24T10:19:02Z", ()),
        ("on 2026-04-24 at 10:19:02", ()),
        ("on 24/04/2026", ()),
        ("wait 1.5 hours", ()),
        ("api v19.0 failed", ()),
        ("retry in 10:19", ()),
        ("code 0131", ()),
        # Glued to a code by a separator only: a run of two groups.
        ("error 131026 10:19", ()),
        ("", ()),
    ],
)
def test_extract_codes(text: str, codes: tuple[int, ...]) -> None:
    assert extract_codes(text) == codes


PHONE_FORMATS = [
    "+{c} {a} {b} {d}",
    "+{c}{a}{b}{d}",
    "({a}) {b}-{d}",
    "{a}-{b}-{d}",
    "{a}.{b}.{d}",
    "{c} {a} {b} {d}",
    "+{c}-{a}-{b}-{d}",
    "{a}{b}{d}",
    "+{c} ({a}) {b}-{d}",
]

phones = st.builds(
    lambda pattern, c, a, b, d: pattern.format(c=c, a=a, b=b, d=d),
    st.sampled_from(PHONE_FORMATS),
    st.from_regex(r"[1-9][0-9]{0,2}", fullmatch=True),
    st.from_regex(r"[2-9][0-9]{2}", fullmatch=True),
    st.from_regex(r"[0-9]{3}", fullmatch=True),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
)

prose = st.text(alphabet=string.ascii_letters + string.digits + " #()+-.:/,_", max_size=40)


@given(prefix=prose, phone=phones, suffix=prose)
def test_extract_codes_phone_adds_no_code(prefix: str, phone: str, suffix: str) -> None:
    apart = set(extract_codes(prefix)) | set(extract_codes(suffix))

    assert set(extract_codes(prefix + phone + suffix)) <= apart


@given(phone=phones)
def test_extract_codes_phone_alone_has_no_code(phone: str) -> None:
    assert extract_codes(phone) == ()


@given(text=st.text(max_size=200))
def test_extract_codes_are_written_in_text(text: str) -> None:
    for code in extract_codes(text):
        assert str(code) in text
        assert 0 <= code <= 999_999


@given(code=st.integers(min_value=100, max_value=999_999), prefix=prose, suffix=prose)
def test_extract_codes_hash_form_found(code: int, prefix: str, suffix: str) -> None:
    text = f"{prefix} (#{code}) {suffix}"

    assert code in extract_codes(text)


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("(#100) 0 retries", (100,)),
        ("(#131056) 5 tries left", (131056,)),
        ("(#131056)(#131026)", (131056, 131026)),
        ("#131056 5 tries left", ()),
        ("ticket #555-1234", ()),
        ("(#0131)", ()),
    ],
)
def test_extract_codes_graph_form(text: str, codes: tuple[int, ...]) -> None:
    assert extract_codes(text) == codes
