"""Total deadlines and body caps on real sockets: a server that trickles its body."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from retrier import httpcall
from retrier.errors import HookUnavailable, OctopodsUnavailable
from retrier.hook import HookClient, ResendRequest
from retrier.octopods import OctopodsClient
from tests.conftest import API_KEY
from tests.servers import HTTPServer, Response


class TrickleServer:
    """Answers every request with headers at once, then one body byte every ``gap_s``."""

    def __init__(self, gap_s: float, body: bytes = b'{"messages": []}') -> None:
        self.gap_s = gap_s
        self.body = body
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
            try:
                conn.sendall(head.encode())
                for byte in self.body:
                    if self._stopped.wait(self.gap_s):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer(gap_s=0.3)
    yield server
    server.close()


def test_send_stops_at_total_deadline(trickle: TrickleServer) -> None:
    """Each byte arrives well within the read timeout, yet the whole call ends at the deadline."""
    started = time.monotonic()
    with httpx.Client(timeout=5) as client, pytest.raises(httpcall.DeadlineExceeded):
        httpcall.send(client, "GET", trickle.url, deadline_s=1.0)
    assert time.monotonic() - started < 2.0


def test_send_caps_body(http_server: Callable[..., HTTPServer]) -> None:
    server = http_server()
    server.script([Response(200, raw=b"x" * 5000)])
    with httpx.Client() as client, pytest.raises(httpcall.BodyTooLarge):
        httpcall.send(client, "GET", server.url, deadline_s=5, max_bytes=1000)


def test_octopods_trickle_times_out(trickle: TrickleServer) -> None:
    client = OctopodsClient(trickle.url, API_KEY, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(OctopodsUnavailable, match="timed out after 1s"):
        client.list_messages()
    client.close()
    assert time.monotonic() - started < 2.0


def test_hook_trickle_times_out(trickle: TrickleServer) -> None:
    hook = HookClient(trickle.url, timeout_s=1.0)
    request = ResendRequest(1, 1, None, "2026-04-24T10:19:02Z", "x", "rule", 1, 1)
    started = time.monotonic()
    with pytest.raises(HookUnavailable, match="timed out"):
        hook.send(request)
    hook.close()
    assert time.monotonic() - started < 2.0


def test_octopods_html_body_named(http_server: Callable[..., HTTPServer]) -> None:
    """A 200 that is not JSON says so, with its content type."""
    server = http_server()
    server.script(
        [Response(200, raw=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})]
    )
    client = OctopodsClient(server.url, API_KEY)
    with pytest.raises(OctopodsUnavailable, match=r"not JSON \(content type text/html\)"):
        client.list_messages()
    client.close()
