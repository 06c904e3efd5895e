"""One HTTP request with a total deadline and a cap on the response body.

httpx's timeouts apply to each network operation, so a server that sends its
body a byte at a time can hold a request open far beyond them. Both of
retrier's HTTP clients read responses through :func:`send`, which stops once
``deadline_s`` has passed since the request started or the body exceeds
``max_bytes``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

#: Largest response body read: a full page of 100 messages is about 25 KB.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class DeadlineExceeded(httpx.TimeoutException):
    """The whole request took longer than its deadline."""


class BodyTooLarge(httpx.HTTPError):
    """The response body was larger than the cap."""


@dataclass(frozen=True)
class Reply:
    """A response read in full: status, headers and body bytes."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        """Return the decoded JSON body, or None when the body is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip() or "none"

    def text(self, limit: int = 200) -> str:
        return self.body[:limit].decode("utf-8", "replace").strip().replace("\n", " ")


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    deadline_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    **options: Any,
) -> Reply:
    """Send one request and read its response within ``deadline_s`` seconds in all.

    Raises:
        DeadlineExceeded: the body was still arriving at the deadline.
        BodyTooLarge: the body exceeded ``max_bytes``.
        httpx.HTTPError: any other transport error, as httpx raises it.
    """
    started = time.monotonic()
    with client.stream(method, url, **options) as response:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"response body larger than {max_bytes} bytes")
            if time.monotonic() - started > deadline_s:
                raise DeadlineExceeded(f"response not complete after {deadline_s:g}s")
            chunks.append(chunk)
        # NOTE: the deadline is checked between chunks, so a server that sends
        # its headers a byte at a time is bounded only by httpx's read timeout.
        return Reply(response.status_code, response.headers, b"".join(chunks))
