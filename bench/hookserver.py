"""A resend hook for the benchmarks, in a process of its own: answers 200.

Run as ``python -m bench.hookserver [DELAY_MS]``; it prints its port, then
serves until killed, answering each request after DELAY_MS (default 0).
TCP_NODELAY is set on every connection: without it, Python's http.server
stalls about 40 ms per keep-alive request on Nagle's algorithm and delayed
ACKs, and the hook, not retrier, would be what is measured.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from retrier.simulator import NoDelayHTTPServer

_BODY = b"{}"
DELAY_S = float(sys.argv[1]) / 1000 if len(sys.argv) > 1 else 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if DELAY_S:
            time.sleep(DELAY_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = NoDelayHTTPServer(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
