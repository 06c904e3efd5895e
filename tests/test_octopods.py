"""Tests for retrier.octopods: parsing both list shapes, and the client against a local server."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrier import __version__
from retrier.errors import (
    OctopodsError,
    OctopodsKeyRejected,
    OctopodsRateLimited,
    OctopodsRequestRejected,
    OctopodsUnavailable,
)
from retrier.octopods import MAX_LIMIT, OctopodsClient, Page, SentMessage, parse_item, parse_page
from tests.conftest import API_KEY
from tests.servers import HTTPServer, Response

SENT_AT = "2026-04-24T10:19:02Z"
SENT_AT_UTC = datetime(2026, 4, 24, 10, 19, 2, tzinfo=UTC)
REASON = "Recipient is not a WhatsApp user."
MISSING = object()

#: The success example from the Octopods API reference.
REFERENCE_BODY = {
    "request_id": "5f0b9c8a-2d1e-4e9a-9c4b-3a2d1e4e9a9c",
    "messages": [
        {
            "message_id": 3851828,
            "status": "delivered",
            "phone_number": "+15551234567",
            "sent_at": "2026-04-24T10:23:45Z",
        },
        {
            "message_id": 3851827,
            "status": "failed",
            "phone_number": "+15557654321",
            "sent_at": SENT_AT,
            "failure_reason": REASON,
        },
    ],
}


def current_item(**fields: Any) -> Any:
    """Return a valid item of the current shape with ``fields`` changed. MISSING drops a key."""
    item = {
        "message_id": 3851827,
        "status": "failed",
        "phone_number": "+15557654321",
        "sent_at": SENT_AT,
        "failure_reason": REASON,
    }
    item.update(fields)
    return {key: value for key, value in item.items() if value is not MISSING}


def legacy_item(item_fields: dict[str, Any] | None = None, **status_fields: Any) -> Any:
    """Return a valid item of the older bare-array shape. MISSING drops a key."""
    status = {
        "channel_message_id": 3851827,
        "message_status": "FAILED",
        "failure_reason": {"code": 131026, "title": "Message undeliverable"},
    }
    status.update(status_fields)
    item = {
        "user_phone_number": "+15557654321",
        "created_at": SENT_AT,
        "message_content": "Your code is 482913",
        "message_status": {key: value for key, value in status.items() if value is not MISSING},
    }
    item.update(item_fields or {})
    return {key: value for key, value in item.items() if value is not MISSING}


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[HTTPServer]:
    # One server for the module, because stopping one waits up to 0.5 s (the
    # poll interval of serve_forever), which would add half a second to each test.
    with HTTPServer() as started:
        yield started


@pytest.fixture
def server(shared_server: HTTPServer) -> HTTPServer:
    """The local Octopods API, which returns an empty page until a test scripts it."""
    shared_server.handler = lambda request: Response(200, {"messages": []})
    shared_server.requests.clear()
    return shared_server


@pytest.fixture
def client(server: HTTPServer) -> Iterator[OctopodsClient]:
    octopods = OctopodsClient(server.url, API_KEY, timeout_s=2.0)
    yield octopods
    octopods.close()


def list_error(client: OctopodsClient) -> OctopodsError:
    """Call list_messages, which must fail, and return the error."""
    with pytest.raises(OctopodsError) as caught:
        client.list_messages()
    return caught.value


# Parsing: the current shape


def test_current_shape_reference() -> None:
    """The reference page's example becomes two messages, newest first."""
    page = parse_page(REFERENCE_BODY)

    assert [message.message_id for message in page.messages] == [3851828, 3851827]
    assert page.invalid == 0


def test_current_shape_failed_item() -> None:
    message = parse_page(REFERENCE_BODY).messages[1]

    assert message == SentMessage(
        message_id=3851827,
        status="failed",
        phone_number="+15557654321",
        sent_at=SENT_AT_UTC,
        failure_reason=REASON,
        failure_code=None,
    )


def test_current_shape_delivered_item() -> None:
    message = parse_page(REFERENCE_BODY).messages[0]

    assert message.failed is False
    assert message.failure_reason == ""


def test_current_shape_failed_flag() -> None:
    assert parse_page(REFERENCE_BODY).messages[1].failed is True


# Parsing: the older bare-array shape


def test_legacy_shape() -> None:
    message = parse_page([legacy_item()]).messages[0]

    assert message == SentMessage(
        message_id=3851827,
        status="failed",
        phone_number="+15557654321",
        sent_at=SENT_AT_UTC,
        failure_reason="Message undeliverable",
        failure_code=131026,
    )


def test_legacy_empty_reason() -> None:
    message = parse_item(legacy_item(failure_reason=""))

    assert message.failure_reason == ""
    assert message.failure_code is None


def test_legacy_content_dropped() -> None:
    """message_content is personal data and is not kept."""
    page = parse_page([legacy_item()])

    assert "482913" not in repr(page)


def test_legacy_status_values() -> None:
    """Each documented upper-case status is read in lower case, and only FAILED is failed."""
    statuses = ["SENT", "DELIVERED", "READ", "FAILED", "DELETED", "UNKNOWN"]
    page = parse_page([legacy_item(message_status=status) for status in statuses])

    assert [message.status for message in page.messages] == [s.lower() for s in statuses]
    assert [message.failed for message in page.messages] == [s == "FAILED" for s in statuses]


def test_legacy_string_id() -> None:
    assert parse_item(legacy_item(channel_message_id="3851900")).message_id == 3851900


def test_shapes_mixed() -> None:
    """A bare array may hold items of both shapes."""
    page = parse_page([current_item(message_id=2), legacy_item(channel_message_id=1)])

    assert [message.message_id for message in page.messages] == [2, 1]


# Parsing: field forms


@pytest.mark.parametrize(
    "raw", [3851827, "3851827", " 3851827 "], ids=["number", "text", "padded text"]
)
def test_message_id_forms(raw: Any) -> None:
    assert parse_item(current_item(message_id=raw)).message_id == 3851827


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-04-24T10:19:02Z", SENT_AT_UTC),
        ("2026-04-24T10:19:02+00:00", SENT_AT_UTC),
        ("2026-04-24T12:19:02+02:00", SENT_AT_UTC),
        ("2026-04-24T05:19:02-05:00", SENT_AT_UTC),
        ("2026-04-24T10:19:02.123Z", SENT_AT_UTC + timedelta(milliseconds=123)),
        ("2026-04-24T10:19:02.123456Z", SENT_AT_UTC + timedelta(microseconds=123456)),
        ("2026-04-24T10:19:02", SENT_AT_UTC),
        ("2026-04-24 10:19:02Z", SENT_AT_UTC),
        (" 2026-04-24T10:19:02Z ", SENT_AT_UTC),
    ],
    ids=[
        "z",
        "utc offset",
        "plus offset",
        "minus offset",
        "millis",
        "micros",
        "naive",
        "space",
        "pad",
    ],
)
def test_sent_at_forms(raw: str, expected: datetime) -> None:
    """Times with Z, an offset or fractional seconds are read. A time without offset is UTC."""
    sent_at = parse_item(current_item(sent_at=raw)).sent_at

    assert sent_at == expected
    assert sent_at.utcoffset() == timedelta(0)


def test_extra_fields_ignored() -> None:
    """Fields the client does not know are ignored."""
    item = current_item(template="otp", channel={"id": 7}, cost=0.01, tags=["a"])

    assert parse_item(item) == parse_item(current_item())


@pytest.mark.parametrize("raw", [None, ""], ids=["null", "empty"])
def test_phone_absent(raw: Any) -> None:
    assert parse_item(current_item(phone_number=raw)).phone_number is None


def test_phone_missing() -> None:
    assert parse_item(current_item(phone_number=MISSING)).phone_number is None


def test_phone_number_value() -> None:
    """A phone number sent as a JSON number is kept as text."""
    assert parse_item(current_item(phone_number=15557654321)).phone_number == "15557654321"


@pytest.mark.parametrize(
    ("raw", "reason", "code"),
    [
        (None, "", None),
        (MISSING, "", None),
        ("", "", None),
        ("  Recipient is not a WhatsApp user.  ", REASON, None),
        ({"code": 131026, "title": "Message undeliverable"}, "Message undeliverable", 131026),
        ({"code": "131026", "title": "Message undeliverable"}, "Message undeliverable", 131026),
        ({"code": None, "title": "Message undeliverable"}, "Message undeliverable", None),
        ({"code": 131026}, "", 131026),
        ({"code": 131026, "title": None}, "", 131026),
        ({"code": 131026, "message": "Re-engagement"}, "Re-engagement", 131026),
        ({}, "", None),
    ],
    ids=[
        "null",
        "missing",
        "empty",
        "padded text",
        "object",
        "code text",
        "code null",
        "no title",
        "title null",
        "message key",
        "empty object",
    ],
)
def test_failure_reason_forms(raw: Any, reason: str, code: int | None) -> None:
    message = parse_item(current_item(failure_reason=raw))

    assert message.failure_reason == reason
    assert message.failure_code == code


@pytest.mark.parametrize("raw", ["failed", "FAILED", "Failed", " failed "])
def test_status_failed_any_case(raw: str) -> None:
    message = parse_item(current_item(status=raw))

    assert message.failed is True
    assert message.status == "failed"


@pytest.mark.parametrize("raw", ["UNKNOWN", "unknown", "delivered", "SENT", "read", "deleted"])
def test_status_not_failed(raw: str) -> None:
    """UNKNOWN means no status yet, so it is not a failure."""
    assert parse_item(current_item(status=raw)).failed is False


# Parsing: malformed items

MALFORMED: list[tuple[str, Any, str]] = [
    ("missing id", current_item(message_id=MISSING), "message_id"),
    ("null id", current_item(message_id=None), "message_id"),
    ("id 0", current_item(message_id=0), "message_id"),
    ("negative id", current_item(message_id=-5), "message_id"),
    ("float id", current_item(message_id=3851827.0), "message_id"),
    ("fraction id", current_item(message_id=3.5), "message_id"),
    ("bool id", current_item(message_id=True), "message_id"),
    ("id abc", current_item(message_id="abc"), "message_id"),
    ("id empty", current_item(message_id=""), "message_id"),
    ("id text 0", current_item(message_id="0"), "message_id"),
    ("id text negative", current_item(message_id="-5"), "message_id"),
    ("id text float", current_item(message_id="12.5"), "message_id"),
    ("id list", current_item(message_id=[1]), "message_id"),
    ("id object", current_item(message_id={"id": 1}), "message_id"),
    ("missing status", current_item(status=MISSING), "status"),
    ("null status", current_item(status=None), "status"),
    ("status number", current_item(status=3), "status"),
    ("status bool", current_item(status=True), "status"),
    ("status empty", current_item(status=""), "status"),
    ("status blank", current_item(status="   "), "status"),
    ("status list", current_item(status=["failed"]), "status"),
    ("missing sent_at", current_item(sent_at=MISSING), "sent_at"),
    ("null sent_at", current_item(sent_at=None), "sent_at"),
    ("bad sent_at", current_item(sent_at="yesterday"), "sent_at"),
    ("sent_at empty", current_item(sent_at=""), "sent_at"),
    ("sent_at number", current_item(sent_at=1777025942), "sent_at"),
    ("sent_at month 13", current_item(sent_at="2026-13-24T10:19:02Z"), "sent_at"),
    ("sent_at object", current_item(sent_at={"time": SENT_AT}), "sent_at"),
    ("phone float", current_item(phone_number=15557654321.0), "phone_number"),
    ("phone list", current_item(phone_number=["+15557654321"]), "phone_number"),
    ("phone bool", current_item(phone_number=True), "phone_number"),
    ("reason list", current_item(failure_reason=["timeout"]), "failure_reason"),
    ("reason number", current_item(failure_reason=131026), "failure_reason"),
    ("reason bool", current_item(failure_reason=False), "failure_reason"),
    ("code bool", current_item(failure_reason={"code": True}), "failure_reason.code"),
    ("code float", current_item(failure_reason={"code": 1.5}), "failure_reason.code"),
    ("code abc", current_item(failure_reason={"code": "abc"}), "failure_reason.code"),
    ("code list", current_item(failure_reason={"code": [131026]}), "failure_reason.code"),
    ("title number", current_item(failure_reason={"code": 1, "title": 5}), "failure_reason.title"),
    ("title list", current_item(failure_reason={"title": ["x"]}), "failure_reason.title"),
    ("item text", "3851827 failed", "item"),
    ("item number", 3851827, "item"),
    ("item null", None, "item"),
    ("item list", [3851827, "failed"], "item"),
    ("item bool", True, "item"),
    (
        "legacy missing id",
        legacy_item(channel_message_id=MISSING),
        "message_status.channel_message_id",
    ),
    (
        "legacy id abc",
        legacy_item(channel_message_id="abc"),
        "message_status.channel_message_id",
    ),
    (
        "legacy missing status",
        legacy_item(message_status=MISSING),
        "message_status.message_status",
    ),
    ("legacy status number", legacy_item(message_status=4), "message_status.message_status"),
    ("legacy bad created_at", legacy_item({"created_at": "24/04/2026"}), "created_at"),
    ("legacy missing created_at", legacy_item({"created_at": MISSING}), "created_at"),
    ("legacy phone list", legacy_item({"user_phone_number": ["x"]}), "user_phone_number"),
    ("legacy reason list", legacy_item(failure_reason=[]), "message_status.failure_reason"),
    (
        "legacy code bool",
        legacy_item(failure_reason={"code": False, "title": "x"}),
        "message_status.failure_reason.code",
    ),
]


@pytest.mark.parametrize(
    ("item", "field"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_item_skipped(item: Any, field: str, caplog: pytest.LogCaptureFixture) -> None:
    """A malformed item is skipped with a warning naming the field, and the rest is used."""
    caplog.set_level(logging.WARNING, logger="retrier.octopods")
    body = [current_item(message_id=1), item, current_item(message_id=3)]

    page = parse_page(body)

    assert [message.message_id for message in page.messages] == [1, 3]
    assert page.invalid == 1
    assert [record.getMessage() for record in caplog.records] == ["skipped malformed item"]
    assert caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].field == field  # type: ignore[attr-defined]
    assert caplog.records[0].index == 1  # type: ignore[attr-defined]


def test_malformed_item_named(caplog: pytest.LogCaptureFixture) -> None:
    """The warning names the item by its message id when it has one."""
    caplog.set_level(logging.WARNING, logger="retrier.octopods")

    parse_page([current_item(message_id=3851900, sent_at="not a time")])

    assert caplog.records[0].item_id == "3851900"  # type: ignore[attr-defined]


def test_malformed_item_unnamed(caplog: pytest.LogCaptureFixture) -> None:
    """An item without a message id is named "?"."""
    caplog.set_level(logging.WARNING, logger="retrier.octopods")

    parse_page([current_item(message_id=MISSING)])

    assert caplog.records[0].item_id == "?"  # type: ignore[attr-defined]


def test_malformed_legacy_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="retrier.octopods")

    parse_page([legacy_item({"created_at": "never"}, channel_message_id=3851901)])

    assert caplog.records[0].item_id == "3851901"  # type: ignore[attr-defined]


def test_invalid_count() -> None:
    """Page.invalid counts every skipped item."""
    body = [
        current_item(message_id=1),
        current_item(message_id=0),
        "junk",
        current_item(message_id=4),
        current_item(status=None),
    ]

    page = parse_page(body)

    assert page.invalid == 3
    assert [message.message_id for message in page.messages] == [1, 4]


def test_id_superscript_digit() -> None:
    """A message id of a non-ASCII digit is a malformed item, not an exception."""
    page = parse_page([current_item(message_id="\u00b2"), current_item(message_id=2)])

    assert page.invalid == 1


def test_code_superscript_digit() -> None:
    page = parse_page([current_item(failure_reason={"code": "\u00b2"}), current_item()])

    assert page.invalid == 1


def test_sent_at_out_of_range() -> None:
    """A time that cannot be converted to UTC is a malformed item, not an exception."""
    item = current_item(sent_at="0001-01-01T00:00:00+01:00")

    page = parse_page([item, current_item(message_id=2)])

    assert page.invalid == 1


def test_id_trailing_separator() -> None:
    """A message id followed by a control character is read or skipped, never raised."""
    page = parse_page([current_item(message_id="5\x1f"), current_item(message_id=2)])

    assert len(page.messages) + page.invalid == 2


# Parsing: whole bodies


@pytest.mark.parametrize(
    "body",
    [[], {"messages": []}, {"messages": None}, {"request_id": "r", "messages": []}],
    ids=["empty array", "empty list", "null list", "with request id"],
)
def test_empty_page(body: Any) -> None:
    page = parse_page(body)

    assert page.messages == []
    assert page.invalid == 0


@pytest.mark.parametrize(
    "body",
    [
        None,
        "messages",
        42,
        True,
        {},
        {"data": []},
        {"messages": {}},
        {"messages": "none"},
        {"request_id": "r", "error": "boom"},
    ],
    ids=["null", "text", "number", "bool", "empty object", "data", "object", "text list", "error"],
)
def test_unexpected_body(body: Any) -> None:
    """A body of neither shape is unreadable: OctopodsUnavailable."""
    with pytest.raises(OctopodsUnavailable):
        parse_page(body)


# The client: the request


def test_request_sent(server: HTTPServer, client: OctopodsClient) -> None:
    """list_messages sends GET /api/v1/whatsapp/messages?limit=100 with the key header."""
    server.script([Response(200, REFERENCE_BODY)])

    client.list_messages()

    request = server.requests[0]
    assert request.method == "GET"
    assert request.path == "/api/v1/whatsapp/messages"
    assert request.query == {"limit": ["100"]}
    assert request.headers["x-octopods-auth"] == API_KEY


def test_request_user_agent(server: HTTPServer, client: OctopodsClient) -> None:
    client.list_messages()

    user_agent = server.requests[0].headers["user-agent"]
    assert "retrier" in user_agent
    assert __version__ in user_agent


@pytest.mark.parametrize(
    ("limit", "sent"), [(500, "100"), (101, "100"), (25, "25"), (0, "1")], ids=str
)
def test_limit_capped(server: HTTPServer, client: OctopodsClient, limit: int, sent: str) -> None:
    """The limit is kept within 1 to MAX_LIMIT."""
    client.list_messages(limit=limit)

    assert server.requests[0].query["limit"] == [sent]


def test_max_limit() -> None:
    assert MAX_LIMIT == 100


def test_page_returned(server: HTTPServer, client: OctopodsClient) -> None:
    server.script([Response(200, REFERENCE_BODY)])

    page = client.list_messages()

    assert page == parse_page(REFERENCE_BODY)


def test_legacy_page_returned(server: HTTPServer, client: OctopodsClient) -> None:
    server.script([Response(200, [legacy_item(), "junk"])])

    page = client.list_messages()

    assert [message.message_id for message in page.messages] == [3851827]
    assert page.invalid == 1


def test_base_url_path(server: HTTPServer) -> None:
    """A base URL with a trailing slash still requests the documented path."""
    octopods = OctopodsClient(server.url + "/", API_KEY, timeout_s=2.0)
    try:
        octopods.list_messages()
    finally:
        octopods.close()

    assert server.requests[0].path == "/api/v1/whatsapp/messages"


# The client: responses that are not a page


@pytest.mark.parametrize(
    "response",
    [
        Response(400, {"request_id": "r", "error": "No messages found"}),
        Response(400, {}),
        Response(400),
        Response(400, raw=b"Bad Request", headers={"Content-Type": "text/plain"}),
    ],
    ids=["error text", "empty object", "empty body", "plain text"],
)
def test_no_messages_yet(server: HTTPServer, client: OctopodsClient, response: Response) -> None:
    """A 400 without error_code means the channel never sent a message: an empty page."""
    server.script([response])

    assert client.list_messages() == Page([])


def test_no_messages_yet_logged(
    server: HTTPServer, client: OctopodsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retrier.octopods")
    server.script([Response(400, {})])

    client.list_messages()

    assert [record.levelno for record in caplog.records] == [logging.INFO]


DEPRECATED_KEY = {
    "request_id": "5f0b9c8a-2d1e-4e9a-9c4b-3a2d1e4e9a9c",
    "error_code": 6,
    "error": "Deprecated API Key. Please go to your Octopods App, and get your new API Key",
}


def test_deprecated_key(server: HTTPServer, client: OctopodsClient) -> None:
    server.script([Response(400, DEPRECATED_KEY)])

    error = list_error(client)

    assert isinstance(error, OctopodsKeyRejected)
    assert error.status == 400


def test_deprecated_key_remedy(server: HTTPServer, client: OctopodsClient) -> None:
    """The message directs the operator to put the key from the app into OCTOPODS_API_KEY."""
    server.script([Response(400, DEPRECATED_KEY)])

    message = str(list_error(client))

    assert "OCTOPODS_API_KEY" in message
    assert "Octopods app" in message
    assert "current key" in message
    assert "error_code 6" in message


@pytest.mark.parametrize("status", [401, 403])
def test_key_rejected(server: HTTPServer, client: OctopodsClient, status: int) -> None:
    server.script([Response(status, {"error": "Unauthorized"})])

    error = list_error(client)

    assert isinstance(error, OctopodsKeyRejected)
    assert error.status == status
    assert "OCTOPODS_API_KEY" in str(error)


def test_key_rejected_no_body(server: HTTPServer, client: OctopodsClient) -> None:
    server.script([Response(401)])

    assert isinstance(list_error(client), OctopodsKeyRejected)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error_code": 1, "error": "argument missing"}),
        (400, {"error_code": 2, "error": "type mismatch"}),
        (404, {"error": "Not Found"}),
        (405, None),
        (422, {"message": "limit must be a number"}),
    ],
    ids=["400 code 1", "400 code 2", "404", "405", "422"],
)
def test_request_rejected(
    server: HTTPServer, client: OctopodsClient, status: int, body: Any
) -> None:
    """Any other 4xx is OctopodsRequestRejected with its status."""
    server.script([Response(status, body)])

    error = list_error(client)

    assert type(error) is OctopodsRequestRejected
    assert error.status == status


def test_request_rejected_detail(server: HTTPServer, client: OctopodsClient) -> None:
    """The message carries the API's error code and text."""
    server.script([Response(400, {"error_code": 2, "error": "type mismatch"})])

    message = str(list_error(client))

    assert "error_code 2" in message
    assert "type mismatch" in message


def _http_date(target: int) -> str:
    return format_datetime(datetime.fromtimestamp(target, tz=UTC), usegmt=True)


def _iso(target: int) -> str:
    return datetime.fromtimestamp(target, tz=UTC).isoformat().replace("+00:00", "Z")


#: Each way a 429 can state the retry time ``target`` (Unix seconds): (headers, body).
RATE_LIMIT_FORMS: dict[str, Callable[[int], tuple[dict[str, str], Any]]] = {
    "retry-after http-date": lambda target: ({"Retry-After": _http_date(target)}, None),
    "body iso": lambda target: ({}, {"retry_at": _iso(target)}),
    "body epoch s": lambda target: ({}, {"retry_at": target}),
    "body epoch ms": lambda target: ({}, {"retry_at": target * 1000}),
    "body nested": lambda target: ({}, {"error": {"retry_after": target}}),
    "x-ratelimit-reset": lambda target: ({"X-RateLimit-Reset": str(target)}, None),
}


@pytest.mark.parametrize("form", list(RATE_LIMIT_FORMS))
def test_rate_limited_retry_at(server: HTTPServer, client: OctopodsClient, form: str) -> None:
    """Each form of retry time gives the stated time as retry_at."""
    target = int(time.time()) + 300
    headers, body = RATE_LIMIT_FORMS[form](target)
    server.script([Response(429, body, headers=headers)])

    error = list_error(client)

    assert isinstance(error, OctopodsRateLimited)
    assert error.retry_at == pytest.approx(target)


def test_rate_limited_retry_after(server: HTTPServer, client: OctopodsClient) -> None:
    """Retry-After in seconds counts from when the response arrived."""
    server.script([Response(429, headers={"Retry-After": "120"})])

    before = time.time()
    error = list_error(client)
    after = time.time()

    assert isinstance(error, OctopodsRateLimited)
    assert error.retry_at is not None
    assert before + 120 <= error.retry_at <= after + 120


@pytest.mark.parametrize(
    "response",
    [
        Response(429),
        Response(429, {"error": "Too many requests"}),
        Response(429, {"retry_at": "soon"}, headers={"Retry-After": "later"}),
    ],
    ids=["empty", "text only", "unreadable"],
)
def test_rate_limited_no_time(
    server: HTTPServer, client: OctopodsClient, response: Response
) -> None:
    server.script([response])

    error = list_error(client)

    assert isinstance(error, OctopodsRateLimited)
    assert error.retry_at is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error(server: HTTPServer, client: OctopodsClient, status: int) -> None:
    server.script([Response(status, {"error": "upstream"})])

    assert isinstance(list_error(client), OctopodsUnavailable)


def test_server_error_html(server: HTTPServer, client: OctopodsClient) -> None:
    """A 502 from a proxy, with an HTML body, is unavailable too."""
    server.script(
        [Response(502, raw=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"})]
    )

    assert isinstance(list_error(client), OctopodsUnavailable)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"<html>maintenance</html>", b"\xff\xfe"], ids=repr
)
def test_invalid_json(server: HTTPServer, client: OctopodsClient, raw: bytes) -> None:
    server.script([Response(200, raw=raw)])

    assert isinstance(list_error(client), OctopodsUnavailable)


@pytest.mark.parametrize(
    "body", [{"data": []}, "ok", {"messages": "none"}], ids=["data", "text", "text list"]
)
def test_unexpected_shape(server: HTTPServer, client: OctopodsClient, body: Any) -> None:
    server.script([Response(200, body)])

    assert isinstance(list_error(client), OctopodsUnavailable)


def test_timeout(http_server: Callable[..., HTTPServer]) -> None:
    """A server slower than timeout_s gives OctopodsUnavailable."""
    server = http_server()
    server.script([Response(200, REFERENCE_BODY, delay_s=1.0)])
    octopods = OctopodsClient(server.url, API_KEY, timeout_s=0.2)

    started = time.monotonic()
    try:
        with pytest.raises(OctopodsUnavailable, match="timed out"):
            octopods.list_messages()
    finally:
        octopods.close()

    assert time.monotonic() - started < 0.9


def test_connection_refused() -> None:
    octopods = OctopodsClient(closed_port_url(), API_KEY, timeout_s=2.0)
    try:
        with pytest.raises(OctopodsUnavailable):
            octopods.list_messages()
    finally:
        octopods.close()


KEY_ERRORS = [
    Response(400, DEPRECATED_KEY),
    Response(401, {"error": "Unauthorized"}),
    Response(403),
    Response(404, {"error": "Not Found"}),
    Response(429, headers={"Retry-After": "30"}),
    Response(500, {"error": "boom"}),
    Response(200, raw=b"not json"),
    Response(200, {"data": []}),
]


@pytest.mark.parametrize(
    "response", KEY_ERRORS, ids=["400", "401", "403", "404", "429", "500", "bad json", "shape"]
)
def test_key_not_in_error(server: HTTPServer, client: OctopodsClient, response: Response) -> None:
    """The API key appears in no exception message."""
    server.script([response])

    error = list_error(client)

    assert API_KEY not in str(error)
    assert API_KEY not in repr(error)


def test_key_not_in_network_error() -> None:
    octopods = OctopodsClient(closed_port_url(), API_KEY, timeout_s=2.0)
    try:
        with pytest.raises(OctopodsUnavailable) as caught:
            octopods.list_messages()
    finally:
        octopods.close()

    assert API_KEY not in str(caught.value)


def test_key_echoed_by_api(server: HTTPServer, client: OctopodsClient) -> None:
    """An API error that quotes the key does not put the key into the exception."""
    server.script([Response(401, {"error": f"Unknown API key {API_KEY}"})])

    error = list_error(client)

    assert API_KEY not in str(error)


# Property: parse_page on arbitrary bodies

# Text without surrogates (Cs), without "other numbers" (No, such as "²") and
# without U+001C-U+001F, because parse_page raises ValueError on the last two in
# a message id or code. test_id_superscript_digit, test_code_superscript_digit
# and test_id_trailing_separator cover them until that is fixed.
_TEXT = st.text(
    st.characters(exclude_categories=["Cs", "No"], exclude_characters="\x1c\x1d\x1e\x1f"),
    max_size=20,
)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.integers().map(str),
)

_FIELDS = [
    "message_id",
    "status",
    "phone_number",
    "sent_at",
    "failure_reason",
    "message_status",
    "channel_message_id",
    "user_phone_number",
    "created_at",
    "code",
    "title",
    "message",
]

_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_FIELDS), _TEXT), children, max_size=6),
    ),
    max_leaves=15,
)

# Times stay within 1971-2100 so that their UTC conversion cannot overflow:
# test_sent_at_out_of_range covers the edge of the datetime range.
_SENT_AT = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.one_of(st.none(), st.timezones()),
).map(datetime.isoformat)

_STATUS = st.sampled_from(["failed", "FAILED", "delivered", "SENT", "read", "UNKNOWN"])


@st.composite
def _valid_items(draw: st.DrawFn) -> tuple[int, str, Any]:
    """Draw a valid item of either shape and return (message_id, status, item)."""
    message_id = draw(st.integers(min_value=1, max_value=2**63))
    status = draw(_STATUS)
    raw_id = draw(st.sampled_from([message_id, str(message_id)]))
    reason = draw(st.one_of(st.none(), _TEXT, st.fixed_dictionaries({"code": st.integers()})))
    extra = draw(st.dictionaries(st.sampled_from(["x", "template", "cost"]), _JSON, max_size=2))
    if draw(st.booleans()):
        item = {
            "message_id": raw_id,
            "status": status,
            "sent_at": draw(_SENT_AT),
            "failure_reason": reason,
            **extra,
        }
    else:
        item = {
            "created_at": draw(_SENT_AT),
            "message_status": {
                "channel_message_id": raw_id,
                "message_status": status,
                "failure_reason": reason,
            },
            **extra,
        }
    return message_id, status.lower(), item


_RANDOM_ITEMS = st.one_of(_JSON, st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=6)).map(
    lambda item: (None, None, item)
)

_QUIET = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class _Quiet:
    """Silence retrier.octopods for a block: the property tests skip thousands of items."""

    def __enter__(self) -> None:
        logging.getLogger("retrier.octopods").disabled = True

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("retrier.octopods").disabled = False


def is_subsequence(expected: list[Any], actual: list[Any]) -> bool:
    """Return whether ``expected`` occurs in ``actual`` in order, possibly with gaps."""
    position = 0
    for value in actual:
        if position < len(expected) and value == expected[position]:
            position += 1
    return position == len(expected)


@_QUIET
@given(items=st.lists(st.one_of(_valid_items(), _RANDOM_ITEMS), max_size=12))
def test_parse_page_property(items: list[tuple[int | None, str | None, Any]]) -> None:
    """Every valid item mixed into a list comes back in order, and the rest count as invalid."""
    body = [item for _, _, item in items]

    with _Quiet():
        page = parse_page(body)

    expected = [(message_id, status) for message_id, status, _ in items if message_id is not None]
    returned = [(message.message_id, message.status) for message in page.messages]
    assert is_subsequence(expected, returned)
    assert len(page.messages) + page.invalid == len(body)


@_QUIET
@given(body=_JSON)
def test_parse_page_any_body(body: Any) -> None:
    """parse_page raises nothing but OctopodsUnavailable, and never that for a list."""
    page: Page | None
    with _Quiet():
        try:
            page = parse_page(body)
        except OctopodsUnavailable:
            page = None

    if isinstance(body, list):
        assert page is not None
        assert len(page.messages) + page.invalid == len(body)
