"""Real HTTP servers on 127.0.0.1 for the tests: a scripted server and a Sentry recorder.

Each server runs in a thread of the test process, binds a free port, and records
every request it receives with its arrival time.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from retrier.simulator import NoDelayHTTPServer


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float  # Unix time

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    """What the server sends back; ``delay_s`` stalls before answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]


class _NoDelayServer(NoDelayHTTPServer):
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out closes the socket before the answer: expected here.
        pass


class HTTPServer:
    """A threaded HTTP server on 127.0.0.1 whose answers come from ``handler``.

    ``handler`` may be replaced at any time; ``script`` answers requests in turn
    from a list and then repeats the last answer.
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda request: Response(200, {}))
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={key.lower(): value for key, value in self.headers.items()},
                    body=body,
                    received_at=time.time(),
                )
                with outer._lock:
                    outer.requests.append(request)
                response = outer.handler(request)
                if response.delay_s:
                    time.sleep(response.delay_s)
                payload = response.encode()
                self.send_response(response.status)
                headers = {"Content-Type": "application/json", **response.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _NoDelayServer(("127.0.0.1", 0), _RequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, responses: Iterable[Response]) -> None:
        """Answer the next requests with ``responses`` in turn, then repeat the last."""
        queue = list(responses)
        lock = threading.Lock()

        def handler(request: Request) -> Response:
            with lock:
                return queue.pop(0) if len(queue) > 1 else queue[0]

        self.handler = handler

    def __enter__(self) -> HTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def decode_envelope(body: bytes, encoding: str | None) -> list[dict[str, Any]]:
    """Return the event-like items (events, check-ins) of a Sentry envelope."""
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)

    lines = body.split(b"\n")
    items: list[dict[str, Any]] = []
    index = 1  # line 0 is the envelope header
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        item_header = json.loads(lines[index])
        length = item_header.get("length")
        if length is not None:
            rest = b"\n".join(lines[index + 1 :])
            payload = rest[:length]
            consumed = payload.count(b"\n") + 1
            index += 1 + consumed
        else:
            payload = lines[index + 1] if index + 1 < len(lines) else b""
            index += 2
        if item_header.get("type") in ("event", "check_in"):
            item = json.loads(payload)
            item["_item_type"] = item_header["type"]
            items.append(item)
    return items


class SentryServer(HTTPServer):
    """Records the events and check-ins that sentry-sdk posts to it."""

    def __init__(self) -> None:
        super().__init__(self._receive)
        self.events: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []

    def _receive(self, request: Request) -> Response:
        encoding = request.headers.get("content-encoding")
        if encoding == "gzip":
            self.raw_bodies.append(gzip.decompress(request.body))
        else:
            self.raw_bodies.append(request.body)
        self.events.extend(decode_envelope(request.body, encoding))
        return Response(200, {})

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def error_events(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["_item_type"] == "event"]
