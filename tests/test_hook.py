"""Tests for retrier.hook: the resend request on the wire and each class of response."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from retrier import __version__
from retrier.errors import HookError, HookRateLimited, HookRejected, HookUnavailable
from retrier.hook import HookAnswer, HookClient, ResendRequest
from tests.conftest import HOOK_SECRET
from tests.servers import HTTPServer, Request, Response

REQUEST = ResendRequest(
    message_id=3851827,
    original_message_id=3851827,
    phone_number="+15557654321",
    sent_at="2026-04-24T10:19:02Z",
    failure_reason="Service temporarily unavailable",
    rule="service-unavailable",
    attempt=1,
    max_attempts=3,
)

#: The documented hook request body for REQUEST.
EXPECTED_BODY = {
    "type": "whatsapp.message.retry",
    "message_id": 3851827,
    "original_message_id": 3851827,
    "phone_number": "+15557654321",
    "sent_at": "2026-04-24T10:19:02Z",
    "failure_reason": "Service temporarily unavailable",
    "rule": "service-unavailable",
    "attempt": 1,
    "max_attempts": 3,
}

WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/resend"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[HTTPServer]:
    # One server for the module, because stopping one waits up to 0.5 s (the
    # poll interval of serve_forever), which would add half a second to each test.
    with HTTPServer() as started:
        yield started


@pytest.fixture
def server(shared_server: HTTPServer) -> HTTPServer:
    """The local resend hook, which returns 200 with no body until a test scripts it."""
    shared_server.handler = lambda request: Response(200)
    shared_server.requests.clear()
    return shared_server


@pytest.fixture
def make_hook(server: HTTPServer) -> Iterator[Callable[..., HookClient]]:
    """Build HookClients aimed at the local hook, and close them all after the test."""
    clients: list[HookClient] = []

    def make(*, secret: str | None = None, timeout_s: float = 2.0) -> HookClient:
        client = HookClient(server.url + "/resend", secret=secret, timeout_s=timeout_s)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def hook(make_hook: Callable[..., HookClient]) -> HookClient:
    """A hook client that signs with HOOK_SECRET."""
    return make_hook(secret=HOOK_SECRET)


def send_error(hook: HookClient, request: ResendRequest = REQUEST) -> HookError:
    """Send ``request``, which must fail, and return the error."""
    with pytest.raises(HookError) as caught:
        hook.send(request)
    return caught.value


def http_date(moment: int) -> str:
    """Format Unix seconds as an HTTP-date (RFC 9110)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(moment))


def received(server: HTTPServer) -> Request:
    """Return the one request the hook received."""
    assert len(server.requests) == 1
    return server.requests[0]


# The request


def test_request_line(server: HTTPServer, hook: HookClient) -> None:
    hook.send(REQUEST)

    request = received(server)
    assert request.method == "POST"
    assert request.path == "/resend"


def test_body_fields(server: HTTPServer, hook: HookClient) -> None:
    """The JSON body has exactly the documented fields and values."""
    hook.send(REQUEST)

    assert received(server).json() == EXPECTED_BODY


def test_body_null_phone(server: HTTPServer, hook: HookClient) -> None:
    """A message without a phone number sends phone_number null."""
    hook.send(dataclasses.replace(REQUEST, phone_number=None))

    assert received(server).json()["phone_number"] is None


def test_body_resend_chain(server: HTTPServer, hook: HookClient) -> None:
    """A later attempt names the failed resend and the original message apart."""
    later = dataclasses.replace(REQUEST, message_id=3851990, attempt=2)

    hook.send(later)

    body = received(server).json()
    assert body["message_id"] == 3851990
    assert body["original_message_id"] == 3851827
    assert body["attempt"] == 2


def test_headers(server: HTTPServer, hook: HookClient) -> None:
    hook.send(REQUEST)

    headers = received(server).headers
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "3851827"


def test_user_agent(server: HTTPServer, hook: HookClient) -> None:
    """The User-Agent names retrier and its version."""
    hook.send(REQUEST)

    user_agent = received(server).headers["user-agent"]
    assert "retrier" in user_agent
    assert __version__ in user_agent


def test_signature_verifies(server: HTTPServer, hook: HookClient) -> None:
    """The Standard Webhooks signature verifies over the bytes the hook received."""
    hook.send(REQUEST)

    request = received(server)
    payload = Webhook(HOOK_SECRET).verify(request.body, request.headers)
    assert payload == EXPECTED_BODY


def test_signature_covers_body(server: HTTPServer, hook: HookClient) -> None:
    """A changed body no longer verifies."""
    hook.send(REQUEST)

    request = received(server)
    tampered = request.body.replace(b"3851827", b"3851828", 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(HOOK_SECRET).verify(tampered, request.headers)


def test_signature_other_secret(server: HTTPServer, hook: HookClient) -> None:
    hook.send(REQUEST)

    request = received(server)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(request.body, request.headers)


def test_timestamp_current(server: HTTPServer, hook: HookClient) -> None:
    """webhook-timestamp is the send time in Unix seconds."""
    before = int(time.time())
    hook.send(REQUEST)
    after = int(time.time())

    timestamp = int(received(server).headers["webhook-timestamp"])
    assert before <= timestamp <= after


def test_unsigned(server: HTTPServer, make_hook: Callable[..., HookClient]) -> None:
    """Without a secret, no Standard Webhooks header is sent."""
    make_hook(secret=None).send(REQUEST)

    headers = received(server).headers
    for name in WEBHOOK_HEADERS:
        assert name not in headers


def test_unsigned_still_idempotent(
    server: HTTPServer, make_hook: Callable[..., HookClient]
) -> None:
    make_hook(secret=None).send(REQUEST)

    assert received(server).headers["idempotency-key"] == "3851827"


def test_webhook_id_stable(server: HTTPServer, hook: HookClient) -> None:
    """Two attempts for one message carry the same webhook-id."""
    hook.send(REQUEST)
    hook.send(dataclasses.replace(REQUEST, attempt=2))

    first, second = (request.headers["webhook-id"] for request in server.requests)
    assert first == second


def test_webhook_id_across_clients(
    server: HTTPServer, make_hook: Callable[..., HookClient]
) -> None:
    """The webhook-id does not depend on the process or client that sends."""
    make_hook(secret=HOOK_SECRET).send(REQUEST)
    make_hook(secret=HOOK_SECRET).send(REQUEST)

    first, second = (request.headers["webhook-id"] for request in server.requests)
    assert first == second


def test_webhook_id_per_message(server: HTTPServer, hook: HookClient) -> None:
    """Another message gets another webhook-id."""
    hook.send(REQUEST)
    hook.send(dataclasses.replace(REQUEST, message_id=3851828, original_message_id=3851828))

    first, second = (request.headers["webhook-id"] for request in server.requests)
    assert first != second


def test_build_matches_wire(server: HTTPServer, hook: HookClient) -> None:
    """build() returns the bytes that send() puts on the wire."""
    body, _ = hook.build(REQUEST, now=time.time())

    hook.send(REQUEST)

    assert received(server).body == body


def test_build_timestamp() -> None:
    """build() signs with the given time, in whole Unix seconds."""
    client = HookClient("http://127.0.0.1:9/resend", secret=HOOK_SECRET)

    body, headers = client.build(REQUEST, now=1777025942.75)

    assert headers["webhook-timestamp"] == "1777025942"
    assert json.loads(body) == EXPECTED_BODY


# The answers


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_success(server: HTTPServer, hook: HookClient, status: int) -> None:
    server.script([Response(status)])

    assert hook.send(REQUEST) == HookAnswer(status)


@pytest.mark.parametrize(
    "raw_id", [3851990, "3851990", " 3851990 "], ids=["number", "text", "padded"]
)
def test_success_new_id(server: HTTPServer, hook: HookClient, raw_id: object) -> None:
    """A 2xx body's message_id, as a number or numeric text, is the new send."""
    server.script([Response(200, {"message_id": raw_id, "status": "queued"})])

    assert hook.send(REQUEST).new_message_id == 3851990


@pytest.mark.parametrize(
    "response",
    [
        Response(200, raw=b"OK", headers={"Content-Type": "text/plain"}),
        Response(200, raw=b"{truncated"),
        Response(200, []),
        Response(200, {"status": "queued"}),
        Response(200, {"message_id": None}),
    ],
    ids=["text", "broken json", "array", "no id", "null id"],
)
def test_success_without_id(server: HTTPServer, hook: HookClient, response: Response) -> None:
    """A 2xx without a usable body is still resent, with no new message id."""
    server.script([response])

    answer = hook.send(REQUEST)

    assert answer.status == 200
    assert answer.new_message_id is None
    assert answer.already_resent is False


@pytest.mark.parametrize("raw_id", [-1, 0, True, 12.5, "abc", "", [3851990]], ids=repr)
def test_success_unusable_id(
    server: HTTPServer, hook: HookClient, raw_id: object, caplog: pytest.LogCaptureFixture
) -> None:
    """An unusable message_id is ignored with a warning, and the resend still counts."""
    caplog.set_level(logging.WARNING, logger="retrier.hook")
    server.script([Response(200, {"message_id": raw_id})])

    answer = hook.send(REQUEST)

    assert answer.new_message_id is None
    assert [record.getMessage() for record in caplog.records] == [
        "hook answer has an unusable message_id"
    ]


def test_success_id_text_zero(server: HTTPServer, hook: HookClient) -> None:
    """The text "0" is as unusable as the number 0."""
    server.script([Response(200, {"message_id": "0"})])

    assert hook.send(REQUEST).new_message_id is None


def test_success_id_superscript(server: HTTPServer, hook: HookClient) -> None:
    """A message_id of a non-ASCII digit is unusable, not an exception."""
    server.script([Response(200, {"message_id": "\u00b2"})])

    assert hook.send(REQUEST).new_message_id is None


def test_conflict(server: HTTPServer, hook: HookClient) -> None:
    """409 means the hook already resent this message: done."""
    server.script([Response(409, {"error": "duplicate Idempotency-Key"})])

    assert hook.send(REQUEST) == HookAnswer(409, already_resent=True)


def test_rate_limited(server: HTTPServer, hook: HookClient) -> None:
    """429 with Retry-After gives the retry time it states."""
    server.script([Response(429, headers={"Retry-After": "30"})])

    before = time.time()
    error = send_error(hook)
    after = time.time()

    assert isinstance(error, HookRateLimited)
    assert error.retry_at is not None
    assert before + 30 <= error.retry_at <= after + 30


def test_rate_limited_status(server: HTTPServer, hook: HookClient) -> None:
    server.script([Response(429, headers={"Retry-After": "30"})])

    assert send_error(hook).status == 429


def test_rate_limited_http_date(server: HTTPServer, hook: HookClient) -> None:
    target = int(time.time()) + 120
    server.script([Response(429, headers={"Retry-After": http_date(target)})])

    error = send_error(hook)

    assert isinstance(error, HookRateLimited)
    assert error.retry_at == pytest.approx(target)


def test_rate_limited_no_time(server: HTTPServer, hook: HookClient) -> None:
    server.script([Response(429, {"error": "slow down"})])

    error = send_error(hook)

    assert isinstance(error, HookRateLimited)
    assert error.retry_at is None


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_unavailable(server: HTTPServer, hook: HookClient, status: int) -> None:
    """408 and 5xx are retried with backoff: HookUnavailable with the status."""
    server.script([Response(status, {"error": "try later"})])

    error = send_error(hook)

    assert type(error) is HookUnavailable
    assert error.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_rejected(server: HTTPServer, hook: HookClient, status: int) -> None:
    """Any other 4xx is given up: HookRejected with the status."""
    server.script([Response(status, {"error": "no such template"})])

    error = send_error(hook)

    assert type(error) is HookRejected
    assert error.status == status


def test_rejected_body_shown(server: HTTPServer, hook: HookClient) -> None:
    """The message quotes the start of the hook's response body."""
    server.script([Response(422, {"error": "no such template"})])

    assert "no such template" in str(send_error(hook))


def test_rejected_empty_body(server: HTTPServer, hook: HookClient) -> None:
    server.script([Response(400)])

    assert "(empty body)" in str(send_error(hook))


def test_rejected_long_body(server: HTTPServer, hook: HookClient) -> None:
    """A long response body is cut to 200 characters and kept on one line."""
    server.script([Response(400, raw=b"x" * 5000 + b"\nsecond line")])

    message = str(send_error(hook))

    assert "x" * 201 not in message
    assert "\n" not in message


def test_timeout(http_server: Callable[..., HTTPServer]) -> None:
    """A hook slower than timeout_s gives HookUnavailable without a status."""
    slow = http_server(lambda request: Response(200, delay_s=1.0))
    client = HookClient(slow.url, secret=HOOK_SECRET, timeout_s=0.2)
    try:
        error = send_error(client)
    finally:
        client.close()

    assert type(error) is HookUnavailable
    assert error.status is None
    assert "timed out" in str(error)


def test_connection_refused() -> None:
    client = HookClient(closed_port_url(), timeout_s=2.0)
    try:
        error = send_error(client)
    finally:
        client.close()

    assert type(error) is HookUnavailable
    assert error.status is None


def test_secret_not_in_errors(server: HTTPServer, hook: HookClient) -> None:
    """The hook secret appears in no error message."""
    server.script([Response(400, {"error": "bad signature"})])

    assert HOOK_SECRET not in str(send_error(hook))
