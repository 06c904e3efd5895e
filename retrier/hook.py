"""Client for the organisation's resend hook.

``POST {RESEND_HOOK_URL}`` with a JSON body describing the failed message; the
hook sends it again. Answers:

- 2xx: resent; a JSON body may carry the new send's ``message_id``;
- 409: already resent (the hook saw this ``Idempotency-Key`` before): done;
- 429: rate limited: :class:`HookRateLimited` with the retry time;
- 408, 5xx, timeouts and connection errors: :class:`HookUnavailable`, retried;
- any other status: :class:`HookRejected`, given up and alerted.

When a secret is set, requests carry the Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) signed over the
exact body bytes sent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from retrier import __version__, httpcall
from retrier.backoff import parse_retry_at
from retrier.errors import HookRateLimited, HookRejected, HookUnavailable
from retrier.parsing import positive_int

logger = logging.getLogger(__name__)

EVENT_TYPE = "whatsapp.message.retry"


@dataclass(frozen=True)
class ResendRequest:
    """What the hook is asked to resend; ``attempt`` counts from 1 across the chain."""

    message_id: int
    original_message_id: int
    phone_number: str | None
    sent_at: str  # ISO-8601 UTC, as "2026-04-24T10:19:02Z"
    failure_reason: str
    rule: str
    attempt: int
    max_attempts: int

    def payload(self) -> dict[str, Any]:
        return {
            "type": EVENT_TYPE,
            "message_id": self.message_id,
            "original_message_id": self.original_message_id,
            "phone_number": self.phone_number,
            "sent_at": self.sent_at,
            "failure_reason": self.failure_reason,
            "rule": self.rule,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
        }


@dataclass(frozen=True)
class HookAnswer:
    """A successful answer: ``already_resent`` for 409; ``new_message_id`` when given."""

    status: int
    new_message_id: int | None = None
    already_resent: bool = False


class HookClient:
    """Posts resend requests; each thread reuses its own ``httpx.Client``.

    Args:
        url: the hook's URL.
        secret: a ``whsec_…`` Standard Webhooks secret, or None to send unsigned.
        timeout_s: connect, read and write timeout of one request.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._signer = Webhook(secret) if secret else None
        self._transport = transport
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=self.timeout_s,
                transport=self._transport,
                headers={"User-Agent": f"retrier/{__version__}"},
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every thread's client."""
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def build(self, request: ResendRequest, *, now: float) -> tuple[bytes, dict[str, str]]:
        """Return the body bytes and headers for ``request``, signed when a secret is set."""
        body = json.dumps(request.payload(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(request.message_id),
        }
        if self._signer is not None:
            # The same id on every attempt lets the hook drop a repeated delivery.
            webhook_id = f"msg_retrier_{request.message_id}"
            timestamp = datetime.fromtimestamp(int(now), tz=UTC)
            headers["webhook-id"] = webhook_id
            headers["webhook-timestamp"] = str(int(now))
            headers["webhook-signature"] = self._signer.sign(webhook_id, timestamp, body)
        return body, headers

    def send(self, request: ResendRequest) -> HookAnswer:
        """Post ``request`` once and interpret the answer.

        Raises:
            HookRateLimited: 429.
            HookUnavailable: 408, 5xx, a timeout or a connection error.
            HookRejected: any other status outside 2xx and 409.
        """
        body, headers = self.build(request, now=time.time())
        try:
            reply = httpcall.send(
                self._client(),
                "POST",
                self.url,
                content=body,
                headers=headers,
                deadline_s=self.timeout_s,
            )
        except httpx.TimeoutException as error:
            raise HookUnavailable(
                f"hook timed out after {self.timeout_s:g}s ({type(error).__name__})"
            ) from error
        except httpx.HTTPError as error:
            raise HookUnavailable(
                f"cannot reach the hook: {type(error).__name__}: {error}"
            ) from error

        status = reply.status
        if 200 <= status < 300:
            return HookAnswer(status, new_message_id=_new_message_id(reply))
        if status == 409:
            return HookAnswer(status, already_resent=True)
        if status == 429:
            retry_at = parse_retry_at(reply.headers, reply.json(), now=time.time())
            raise HookRateLimited("hook responded 429 (rate limited)", retry_at=retry_at)
        if status == 408 or status >= 500:
            raise HookUnavailable(f"hook responded {status}", status=status)
        raise HookRejected(
            f"hook responded {status}: {reply.text() or '(empty body)'}", status=status
        )


def _new_message_id(reply: httpcall.Reply) -> int | None:
    body = reply.json()
    if not isinstance(body, Mapping):
        return None
    raw = body.get("message_id")
    new_message_id = positive_int(raw)
    if new_message_id is not None:
        return new_message_id
    if raw is not None:
        logger.warning("hook answer has an unusable message_id", extra={"value": repr(raw)[:40]})
    return None
