"""An Octopods list endpoint for the benchmarks, in a process of its own.

``python -m bench.octopods KEY`` prints its port. GET /api/v1/whatsapp/messages
serves the current page; POST /page?kind=KIND&count=N replaces it with N new
sends of that kind (``retry``, ``mixed`` or ``delivered``), newest first, with
ids above any served before; POST /page?kind=same keeps the page as it is.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from retrier.simulator import NoDelayHTTPServer

REASONS = {
    "retry": ["(#131016) Service temporarily unavailable.", "(#131000) Something went wrong."],
    "mixed": [
        "(#131016) Service temporarily unavailable.",
        "Recipient is not a WhatsApp user.",
        "(#131047) Re-engagement message: more than 24 hours since the last reply.",
        "Carrier gateway reported an unexpected condition 4711.",
        "(#130429) Rate limit hit",
    ],
}


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_id = 5_000_000
        self.page: list[dict[str, Any]] = []

    def fill(self, kind: str, count: int) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        items = []
        with self.lock:
            for index in range(count):
                self.next_id += 1
                item: dict[str, Any] = {
                    "message_id": self.next_id,
                    "status": "delivered" if kind == "delivered" else "failed",
                    "phone_number": f"+1555{self.next_id % 10**7:07d}",
                    "sent_at": now,
                }
                if kind != "delivered":
                    reasons = REASONS[kind]
                    item["failure_reason"] = reasons[index % len(reasons)]
                items.append(item)
            self.page = list(reversed(items))


STATE = _State()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.headers.get("X-Octopods-Auth") != sys.argv[1]:
            self._send(401, {"error": "bad key"})
            return
        with STATE.lock:
            page = list(STATE.page)
        self._send(200, {"request_id": "bench", "messages": page})

    def do_POST(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        kind = query.get("kind", ["retry"])[0]
        if kind != "same":
            STATE.fill(kind, int(query.get("count", ["100"])[0]))
        self._send(200, {})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = NoDelayHTTPServer(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
