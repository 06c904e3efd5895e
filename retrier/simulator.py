"""Local stand-ins for Octopods and a resend hook, for ``retrier demo`` and the tests.

:class:`OctopodsSimulator` serves the documented list endpoint on 127.0.0.1:
newest sends first, at most 100, ``X-Octopods-Auth`` checked (a wrong key gets
the documented deprecated-key 400, a missing one 401), and 429 with
``Retry-After`` on the requests it is told to limit. :class:`ResendHook` plays
the organisation's endpoint: it verifies the Standard Webhooks signature, asks
the simulator to send the message again, and answers with the new message id.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

logger = logging.getLogger(__name__)

#: Failure reasons the simulator draws from: (reason, share of failures).
#: A reason is text, or a {code, title} object as the older help page shows.
FAILURE_MIX: list[tuple[str | dict[str, Any], int]] = [
    ("Recipient is not a WhatsApp user.", 3),
    ("(#131016) Service temporarily unavailable. Please retry later.", 3),
    ("(#130429) Rate limit hit: Cloud API message throughput has been reached.", 2),
    ("(#131000) Something went wrong.", 2),
    (
        "(#131047) Re-engagement message: more than 24 hours have passed since the recipient last replied.",
        2,
    ),
    ({"code": 131026, "title": "Message undeliverable"}, 2),
    ("The template is not approved for the recipient's country.", 1),
    ("Carrier gateway reported an unexpected condition.", 2),
]

#: Status shares of the sends that do not fail.
OK_STATUSES = [("delivered", 5), ("read", 4), ("sent", 2)]


class NoDelayHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that sets TCP_NODELAY on every connection.

    Without it, Python's http.server stalls about 40 ms per keep-alive request
    on Nagle's algorithm and delayed ACKs.
    """

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


Route = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], Any]]


def _serve(route: Route) -> NoDelayHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra_headers, payload = route(self.command, self.path, headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _handle
        do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = NoDelayHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class OctopodsSimulator:
    """A local Octopods list endpoint with a growing history of sends.

    Args:
        api_key: the key requests must carry.
        seed: seeds the random mix, so a run can be repeated.
        failure_share: fraction of new sends that fail.
        rate_limited_requests: 1-based numbers of list requests answered 429.
        retry_after_s: the ``Retry-After`` those 429s carry.
    """

    def __init__(
        self,
        api_key: str,
        *,
        seed: int = 7,
        failure_share: float = 0.3,
        rate_limited_requests: frozenset[int] = frozenset(),
        retry_after_s: int = 1,
    ) -> None:
        self.api_key = api_key
        self.failure_share = failure_share
        self.rate_limited_requests = rate_limited_requests
        self.retry_after_s = retry_after_s
        self.requests = 0
        self.rate_limited = 0
        self.listed_ids: set[int] = set()
        self._random = random.Random(seed)
        self._ids = itertools.count(3_851_000)
        self._messages: list[dict[str, Any]] = []  # newest first
        self._lock = threading.Lock()
        self._server = _serve(self._route)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def send(
        self,
        *,
        status: str = "delivered",
        reason: str | dict[str, Any] | None = None,
        phone_number: str | None = None,
        sent_at: datetime | None = None,
    ) -> int:
        """Add one send to the history and return its message id."""
        message_id = next(self._ids)
        moment = sent_at or datetime.now(UTC)
        item: dict[str, Any] = {
            "message_id": message_id,
            "status": status,
            "phone_number": phone_number or f"+1555{self._random.randrange(10**7):07d}",
            "sent_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if status == "failed":
            item["failure_reason"] = reason if reason is not None else ""
        with self._lock:
            self._messages.insert(0, item)
        return message_id

    def send_random(self, count: int) -> None:
        """Add ``count`` sends drawn from the realistic mix of outcomes."""
        reasons, weights = zip(*FAILURE_MIX, strict=True)
        statuses, status_weights = zip(*OK_STATUSES, strict=True)
        for _ in range(count):
            if self._random.random() < self.failure_share:
                reason = self._random.choices(reasons, weights)[0]
                self.send(status="failed", reason=reason)
            else:
                self.send(status=self._random.choices(statuses, status_weights)[0])

    def resend(self, message_id: int) -> int:
        """Send a message again, as the organisation's hook would; return the new id."""
        with self._lock:
            original = next(
                (item for item in self._messages if item["message_id"] == message_id), None
            )
        phone = original["phone_number"] if original else None
        return self.send(status="delivered", phone_number=phone)

    def set_status(
        self, message_id: int, status: str, reason: str | dict[str, Any] | None = None
    ) -> None:
        """Change a send's status, as Octopods does when a delivery report arrives late."""
        with self._lock:
            for item in self._messages:
                if item["message_id"] == message_id:
                    item["status"] = status
                    if status == "failed":
                        item["failure_reason"] = reason if reason is not None else ""
                    else:
                        item.pop("failure_reason", None)
                    return
        raise KeyError(f"no send with message_id {message_id}")

    def sent_messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._messages]

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(path)
        if method != "GET" or parts.path != "/api/v1/whatsapp/messages":
            return 404, {}, {"error": "not found"}

        with self._lock:
            self.requests += 1
            number = self.requests
        request_id = str(uuid.uuid4())
        key = headers.get("x-octopods-auth")
        if not key:
            return 401, {}, {"request_id": request_id, "error": "Missing X-Octopods-Auth header"}
        if key != self.api_key:
            return (
                400,
                {},
                {
                    "request_id": request_id,
                    "error_code": 6,
                    "error": "Deprecated API Key. Please go to your Octopods App, and get your new API Key",
                },
            )
        if number in self.rate_limited_requests:
            self.rate_limited += 1
            return (
                429,
                {"Retry-After": str(self.retry_after_s)},
                {"request_id": request_id, "error": "Too many requests"},
            )

        try:
            limit = int(parse_qs(parts.query).get("limit", ["100"])[0])
        except ValueError:
            limit = 100
        limit = max(1, min(limit, 100))
        with self._lock:
            page = [dict(item) for item in self._messages[:limit]]
            self.listed_ids.update(item["message_id"] for item in page)
        return 200, {}, {"request_id": request_id, "messages": page}


class ResendHook:
    """A local resend endpoint that verifies signatures and resends through the simulator.

    Args:
        simulator: where resends are sent.
        secret: the ``whsec_…`` secret to verify, or None to accept unsigned requests.
        fail_first: message ids whose first call is answered 503, to show backoff.
    """

    def __init__(
        self,
        simulator: OctopodsSimulator,
        *,
        secret: str | None,
        fail_first: frozenset[int] = frozenset(),
    ) -> None:
        self.simulator = simulator
        self.fail_first = set(fail_first)
        self.calls: list[dict[str, Any]] = []
        self.rejected_signatures = 0
        self._verifier = Webhook(secret) if secret else None
        self._lock = threading.Lock()
        self._server = _serve(self._route)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/resend"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        if method != "POST":
            return 405, {}, {"error": "POST only"}
        if self._verifier is not None:
            try:
                self._verifier.verify(body, headers)
            except WebhookVerificationError:
                with self._lock:
                    self.rejected_signatures += 1
                return 401, {}, {"error": "bad signature"}

        payload = json.loads(body)
        message_id = int(payload["message_id"])
        with self._lock:
            self.calls.append(payload)
            if message_id in self.fail_first:
                self.fail_first.discard(message_id)
                return 503, {}, {"error": "temporarily unavailable"}
        new_id = self.simulator.resend(message_id)
        return 200, {}, {"message_id": new_id}


def recent(minutes: float) -> datetime:
    """Return the UTC time ``minutes`` ago."""
    return datetime.now(UTC) - timedelta(minutes=minutes)
