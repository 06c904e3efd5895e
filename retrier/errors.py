"""Exceptions raised by retrier.

Lower-level errors (httpx, redis, pydantic, ruamel.yaml) are translated into
these at the module that talks to the library, so callers catch one tree::

    RetrierError
    ├── ConfigError                 a setting is missing or invalid
    ├── RulesError                  the rules file is invalid (carries path and line)
    ├── StoreError                  Redis did not answer
    ├── BrokerError                 RabbitMQ (BROKER_URL) did not answer
    ├── OctopodsError               listing sent messages failed
    │   ├── OctopodsUnavailable     timeout, connection error, 5xx or unreadable body
    │   ├── OctopodsRequestRejected any other 4xx
    │   ├── OctopodsKeyRejected     deprecated (400, error_code 6) or unauthorised (401/403) key
    │   └── OctopodsRateLimited     429; carries the retry time when the API gave one
    └── HookError                   the resend hook did not accept the request
        ├── HookUnavailable         408, 5xx, timeout or connection error: retry with backoff
        ├── HookRateLimited         429; carries the retry time when the hook gave one
        └── HookRejected            any other 4xx: give up and alert
"""

from __future__ import annotations

from pathlib import Path


class RetrierError(Exception):
    """Base class of every error retrier raises on purpose."""


class ConfigError(RetrierError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class RulesError(RetrierError):
    """The rules file is invalid.

    Args:
        message: what is wrong and how to fix it.
        path: the rules file.
        line: 1-based line of the offending node, or None when the error concerns
            the whole file (for example, it cannot be read).
    """

    def __init__(self, message: str, *, path: Path | str, line: int | None = None) -> None:
        self.message = message
        self.path = Path(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


class StoreError(RetrierError):
    """Redis did not answer or answered with an error."""


class BrokerError(RetrierError):
    """The RabbitMQ broker named by BROKER_URL did not answer."""


class OctopodsError(RetrierError):
    """Listing sent messages on the Octopods API failed."""


class OctopodsUnavailable(OctopodsError):
    """The API timed out, refused the connection, answered 5xx or sent an unreadable body."""


class OctopodsRequestRejected(OctopodsError):
    """The API rejected the request with a 4xx other than 401, 403 and 429."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class OctopodsKeyRejected(OctopodsError):
    """The API key is deprecated, revoked or unknown: nothing works until it is replaced."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class OctopodsRateLimited(OctopodsError):
    """The API answered 429.

    Attributes:
        retry_at: Unix time (seconds) before which no request may be made, or None
            when the response carried no readable retry time.
    """

    def __init__(self, message: str, *, retry_at: float | None) -> None:
        self.retry_at = retry_at
        super().__init__(message)


class HookError(RetrierError):
    """The resend hook did not accept the request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class HookUnavailable(HookError):
    """The hook timed out, refused the connection, or answered 408 or 5xx."""


class HookRateLimited(HookError):
    """The hook answered 429.

    Attributes:
        retry_at: Unix time (seconds) before which no request may be made, or None
            when the response carried no readable retry time.
    """

    def __init__(self, message: str, *, retry_at: float | None) -> None:
        self.retry_at = retry_at
        super().__init__(message, status=429)


class HookRejected(HookError):
    """The hook answered a 4xx that retrying cannot fix."""
