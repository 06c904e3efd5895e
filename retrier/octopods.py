"""Client for the Octopods "List Sent WhatsApp Messages" endpoint.

``GET {base_url}/api/v1/whatsapp/messages?limit=100`` with the
``X-Octopods-Auth`` header returns the newest sends, newest first, with no
paging. The vendor documents two shapes of the answer, and this client accepts
both:

- an object ``{"request_id": …, "messages": [{message_id, status, phone_number,
  sent_at, failure_reason}]}`` with lower-case statuses and a text reason;
- a bare array of ``{user_phone_number, created_at, message_content,
  message_status: {channel_message_id, message_status, failure_reason}}`` with
  upper-case statuses and a reason that is ``""`` or ``{"code", "title"}``.

Items are validated one by one: a malformed item is skipped with a warning that
names it and the field, and the rest of the page is used. ``message_content`` is
personal data and is never read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from retrier import __version__, httpcall
from retrier.backoff import parse_retry_at
from retrier.errors import (
    OctopodsKeyRejected,
    OctopodsRateLimited,
    OctopodsRequestRejected,
    OctopodsUnavailable,
)
from retrier.parsing import positive_int
from retrier.redact import redactor

logger = logging.getLogger(__name__)

#: The API's maximum page size, and what retrier always asks for.
MAX_LIMIT = 100

#: ``error_code`` of a 400 that means the key was rotated or revoked.
DEPRECATED_KEY_ERROR_CODE = 6

_ENDPOINT = "/api/v1/whatsapp/messages"


@dataclass(frozen=True)
class SentMessage:
    """One send as the API lists it, normalised from either shape."""

    message_id: int
    status: str  # lower case: sent, delivered, read, failed, deleted, unknown, …
    phone_number: str | None
    sent_at: datetime  # UTC
    failure_reason: str  # "" when the API gave none
    failure_code: int | None  # from a structured {code, title} reason

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass(frozen=True)
class Page:
    """One list response: the valid messages, newest first, and how many items were skipped."""

    messages: list[SentMessage]
    invalid: int = 0


class InvalidItem(ValueError):
    """One list item that cannot be used; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class OctopodsClient:
    """Lists sent messages; one ``httpx.Client`` (and its connections) is reused.

    Args:
        base_url: the API origin, such as ``https://app.octopods.io``.
        api_key: the WhatsApp Business API key; never logged.
        timeout_s: connect, read and write timeout of one request.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        redactor.add_secrets([api_key])
        self.timeout_s = timeout_s
        self._client = httpx.Client(
            base_url=base_url,
            headers={
                "X-Octopods-Auth": api_key,
                "Accept": "application/json",
                "User-Agent": f"retrier/{__version__}",
            },
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def list_messages(self, limit: int = MAX_LIMIT) -> Page:
        """Fetch the newest ``limit`` (at most 100) sends, newest first.

        Raises:
            OctopodsKeyRejected: 400 with error_code 6, 401 or 403.
            OctopodsRateLimited: 429, with the retry time when one could be read.
            OctopodsRequestRejected: any other 4xx except the "no messages yet" 400.
            OctopodsUnavailable: timeout, connection error, 5xx, or an unreadable body.
        """
        limit = max(1, min(limit, MAX_LIMIT))
        try:
            reply = httpcall.send(
                self._client, "GET", _ENDPOINT, params={"limit": limit}, deadline_s=self.timeout_s
            )
        except httpx.TimeoutException as error:
            raise OctopodsUnavailable(
                f"Octopods timed out after {self.timeout_s:g}s: {error}"
            ) from error
        except httpcall.BodyTooLarge as error:
            raise OctopodsUnavailable(f"Octopods sent a {error}") from error
        except httpx.HTTPError as error:
            raise OctopodsUnavailable(f"cannot reach Octopods: {error}") from error

        body = reply.json()
        if reply.status == 200 and body is None:
            raise OctopodsUnavailable(
                f"Octopods responded 200 with a body that is not JSON (content type {reply.content_type}): "
                f"{reply.text(80)!r}"
            )
        if reply.status == 200:
            return parse_page(body)
        if _is_no_messages_yet(reply.status, body):
            logger.info("octopods responded 400 without error_code: no messages sent yet")
            return Page([])
        raise _error_for(reply, body)


def _error_for(reply: httpcall.Reply, body: Any) -> Exception:
    status = reply.status
    error_code = body.get("error_code") if isinstance(body, Mapping) else None
    detail = _error_text(body)

    if status == 429:
        retry_at = parse_retry_at(reply.headers, body, now=time.time())
        return OctopodsRateLimited(f"Octopods rate limit hit (429){detail}", retry_at=retry_at)
    if (status == 400 and error_code == DEPRECATED_KEY_ERROR_CODE) or status in (401, 403):
        return OctopodsKeyRejected(
            f"Octopods rejected the API key ({status}{detail}): put the current key from "
            "the Octopods app (Settings, API key) into OCTOPODS_API_KEY and restart",
            status=status,
        )
    if status >= 500:
        return OctopodsUnavailable(f"Octopods responded {status}{detail}")
    return OctopodsRequestRejected(
        f"Octopods rejected the request ({status}{detail})", status=status
    )


def _is_no_messages_yet(status: int, body: Any) -> bool:
    # An older help page documents a 400 for a channel that has never sent a
    # message. Its body is not documented; any 400 that carries no error_code is
    # read as that, while every documented error comes with one.
    return status == 400 and not (isinstance(body, Mapping) and "error_code" in body)


def _error_text(body: Any) -> str:
    if isinstance(body, Mapping):
        parts = [f"error_code {body['error_code']}"] if "error_code" in body else []
        message = body.get("error") or body.get("message")
        if isinstance(message, str) and message:
            # An API may echo the key it rejected: never let it into a log line.
            parts.append(redactor.text(message[:200]))
        return ": " + ", ".join(parts) if parts else ""
    return ""


def parse_page(body: Any) -> Page:
    """Turn a decoded 200 body of either documented shape into valid messages.

    Raises:
        OctopodsUnavailable: the body is neither shape (the items themselves are
            checked one by one, and bad ones skipped).
    """
    if isinstance(body, list):
        items = body
    elif isinstance(body, Mapping) and isinstance(body.get("messages"), list):
        items = body["messages"]
    elif isinstance(body, Mapping) and body.get("messages") is None and "messages" in body:
        items = []
    else:
        raise OctopodsUnavailable(
            f"Octopods sent an unexpected body: expected a 'messages' list, got {_shape(body)}"
        )

    messages = []
    invalid = 0
    for index, item in enumerate(items):
        try:
            messages.append(parse_item(item))
        except InvalidItem as error:
            invalid += 1
            logger.warning(
                "skipped malformed item",
                extra={
                    "index": index,
                    "item_id": _item_id(item),
                    "field": error.field,
                    "error": str(error),
                },
            )
    return Page(messages, invalid)


def parse_item(item: Any) -> SentMessage:
    """Normalise one list item of either shape; raise InvalidItem naming the field."""
    if not isinstance(item, Mapping):
        raise InvalidItem("item", f"expected an object, got {_shape(item)}")

    if isinstance(item.get("message_status"), Mapping):
        nested = item["message_status"]
        return SentMessage(
            message_id=_message_id(
                nested.get("channel_message_id"), "message_status.channel_message_id"
            ),
            status=_status(nested.get("message_status"), "message_status.message_status"),
            phone_number=_phone(item.get("user_phone_number"), "user_phone_number"),
            sent_at=_timestamp(item.get("created_at"), "created_at"),
            **_reason(nested.get("failure_reason"), "message_status.failure_reason"),
        )

    return SentMessage(
        message_id=_message_id(item.get("message_id"), "message_id"),
        status=_status(item.get("status"), "status"),
        phone_number=_phone(item.get("phone_number"), "phone_number"),
        sent_at=_timestamp(item.get("sent_at"), "sent_at"),
        **_reason(item.get("failure_reason"), "failure_reason"),
    )


def _message_id(raw: Any, field: str) -> int:
    if raw is None:
        raise InvalidItem(field, "missing")
    value = positive_int(raw)
    if value is None:
        raise InvalidItem(field, f"expected a positive number or numeric string, got {_short(raw)}")
    return value


def _status(raw: Any, field: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidItem(field, f"expected a status such as 'failed', got {_short(raw)}")
    return raw.strip().lower()


def _phone(raw: Any, field: str) -> str | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, str):
        return raw.strip()
    raise InvalidItem(field, f"expected text, got {type(raw).__name__}")


def _timestamp(raw: Any, field: str) -> datetime:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidItem(field, f"expected an ISO-8601 time, got {_short(raw)}")
    try:
        moment = datetime.fromisoformat(raw.strip())
        if moment.tzinfo is None:
            # Both help pages show UTC ("Z"); a time without an offset is read as UTC.
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidItem(field, f"expected an ISO-8601 time, got {_short(raw)}") from None


def _reason(raw: Any, field: str) -> dict[str, Any]:
    if raw is None:
        return {"failure_reason": "", "failure_code": None}
    if isinstance(raw, str):
        return {"failure_reason": raw.strip(), "failure_code": None}
    if isinstance(raw, Mapping):
        raw_code = raw.get("code")
        title = raw.get("title") or raw.get("message") or ""
        code = _code(raw_code)
        if raw_code is not None and code is None:
            raise InvalidItem(f"{field}.code", f"expected a number, got {_short(raw_code)}")
        if not isinstance(title, str):
            raise InvalidItem(f"{field}.title", f"expected text, got {type(title).__name__}")
        return {"failure_reason": title.strip(), "failure_code": code}
    raise InvalidItem(field, f"expected text or {{code, title}}, got {type(raw).__name__}")


def _code(raw: Any) -> int | None:
    # Any integer is kept as the API sent it (Graph's code 0 is an authentication
    # error); text must be ASCII digits.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip() == "0":
        return 0
    return positive_int(raw)


def _item_id(item: Any) -> str:
    if not isinstance(item, Mapping):
        return "?"
    nested = item.get("message_status")
    raw = (
        nested.get("channel_message_id") if isinstance(nested, Mapping) else item.get("message_id")
    )
    return _short(raw) if raw is not None else "?"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"an object with keys {sorted(map(str, value))[:5]}"
    return type(value).__name__
