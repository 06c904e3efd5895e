"""Settings read from the environment (or a ``.env`` file) with pydantic-settings.

Every setting is named by its environment variable. A missing or invalid value
stops start-up with one line that names the variable, shows the value (secrets
masked) and says what is expected: see :func:`load_settings`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sentry_sdk.utils import BadDsn, Dsn

from retrier.errors import ConfigError
from retrier.redact import mask_secret, redactor

logger = logging.getLogger(__name__)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: Variables whose values are never shown, not even in an error message.
SECRET_VARIABLES = frozenset({"OCTOPODS_API_KEY", "RESEND_HOOK_SECRET", "SENTRY_DSN", "BROKER_URL"})

#: What each variable expects, for error messages.
EXPECTED = {
    "OCTOPODS_API_KEY": "the WhatsApp Business API key from the Octopods app",
    "OCTOPODS_BASE_URL": "an http(s) origin without a path, such as https://app.octopods.io",
    "REDIS_URL": "a redis://, rediss:// or unix:// URL such as redis://localhost:6379/0",
    "REDIS_TLS_INSECURE": "true or false",
    "BROKER_URL": "an amqp:// or amqps:// URL of RabbitMQ, or unset to queue in Redis",
    "RESEND_HOOK_URL": "the http(s) URL of your resend endpoint",
    "RESEND_HOOK_SECRET": "a Standard Webhooks secret of the form whsec_<base64>",
    "RESEND_HOOK_TIMEOUT": "seconds, a number from 0.1 to 25",
    "RETRIER_RULES_PATH": "the path of the rules file, such as config/rules.yaml",
    "RETRIER_POLL_INTERVAL": "seconds, a number from 1 to 3600",
    "RETRIER_MAX_MESSAGE_AGE": "seconds, a number above 0 and at most 2592000 (30 days)",
    "RETRIER_DEDUP_TTL": "seconds, a whole number from 3600 to 7776000 (90 days)",
    "RETRIER_REDIS_PREFIX": "letters, digits, '-', '_' or ':', such as retrier",
    "RETRIER_DRY_RUN": "true or false",
    "SENTRY_DSN": "a Sentry DSN such as https://<key>@o0.ingest.sentry.io/<project>",
    "SENTRY_ENVIRONMENT": "a name such as production",
    "SENTRY_MONITOR_SLUG": "a Sentry Crons monitor slug: lower-case letters, digits and '-'",
    "RETRIER_ALERT_LIMIT": "a whole number of alerts per rule per hour, at least 1",
    "RETRIER_POLLER_LEASE": "seconds, a number from 3 to 600",
    "RETRIER_MIN_POLL_INTERVAL": "seconds, a number from 1 to 3600",
    "RETRIER_RECIPIENT_DAILY_LIMIT": "a whole number of resends per phone number per day; 0 for no limit",
    "LOG_LEVEL": "one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
}


class Settings(BaseSettings):
    """The process configuration; field docs give the unit of each value."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        case_sensitive=False,
        validate_by_name=True,
        frozen=True,
    )

    octopods_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OCTOPODS_API_KEY", "octopods_api_key")
    )
    octopods_base_url: str = Field(
        "https://app.octopods.io",
        validation_alias=AliasChoices("OCTOPODS_BASE_URL", "octopods_base_url"),
    )
    redis_url: str = Field(
        "redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    redis_tls_insecure: bool = Field(
        False, validation_alias=AliasChoices("REDIS_TLS_INSECURE", "redis_tls_insecure")
    )
    #: RabbitMQ for the job queue instead of Redis; claims, records and the
    #: backoff stay in Redis either way.
    broker_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BROKER_URL", "broker_url")
    )
    resend_hook_url: str | None = Field(
        None, validation_alias=AliasChoices("RESEND_HOOK_URL", "resend_hook_url")
    )
    resend_hook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RESEND_HOOK_SECRET", "resend_hook_secret")
    )
    #: Seconds, capped at 25 so that an in-flight call normally ends within
    #: Heroku's 30 s shutdown grace (the worker gives it 25 s).
    resend_hook_timeout_s: float = Field(
        10.0,
        ge=0.1,
        le=25,
        validation_alias=AliasChoices("RESEND_HOOK_TIMEOUT", "resend_hook_timeout_s"),
    )
    rules_path: Path = Field(
        Path("config/rules.yaml"),
        validation_alias=AliasChoices("RETRIER_RULES_PATH", "rules_path"),
    )
    poll_interval_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        validation_alias=AliasChoices("RETRIER_POLL_INTERVAL", "poll_interval_s"),
    )
    max_message_age_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        validation_alias=AliasChoices("RETRIER_MAX_MESSAGE_AGE", "max_message_age_s"),
    )
    dedup_ttl_s: int = Field(
        604800,
        ge=3600,
        le=90 * 86400,
        validation_alias=AliasChoices("RETRIER_DEDUP_TTL", "dedup_ttl_s"),
    )
    redis_prefix: str = Field(
        "retrier",
        pattern=r"^[A-Za-z0-9_:-]{1,64}$",
        validation_alias=AliasChoices("RETRIER_REDIS_PREFIX", "redis_prefix"),
    )
    dry_run: bool = Field(False, validation_alias=AliasChoices("RETRIER_DRY_RUN", "dry_run"))
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SENTRY_DSN", "sentry_dsn")
    )
    sentry_environment: str | None = Field(
        None, validation_alias=AliasChoices("SENTRY_ENVIRONMENT", "sentry_environment")
    )
    monitor_slug: str = Field(
        "retrier-poller",
        pattern=r"^[a-z0-9][a-z0-9-]{0,49}$",
        validation_alias=AliasChoices("SENTRY_MONITOR_SLUG", "monitor_slug"),
    )
    alert_limit: int = Field(
        20, ge=1, validation_alias=AliasChoices("RETRIER_ALERT_LIMIT", "alert_limit")
    )
    #: Seconds the poller lease lasts: a standby takes over this long after the
    #: active poller dies.
    poller_lease_s: float = Field(
        30.0, ge=3, le=600, validation_alias=AliasChoices("RETRIER_POLLER_LEASE", "poller_lease_s")
    )
    min_poll_interval_s: float = Field(
        10.0,
        ge=1,
        le=3600,
        validation_alias=AliasChoices("RETRIER_MIN_POLL_INTERVAL", "min_poll_interval_s"),
    )
    recipient_daily_limit: int = Field(
        10,
        ge=0,
        le=1000,
        validation_alias=AliasChoices("RETRIER_RECIPIENT_DAILY_LIMIT", "recipient_daily_limit"),
    )
    log_level: LogLevel = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("octopods_base_url", "resend_hook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        return value.rstrip("/") if parts.path in ("", "/") else value

    @field_validator("octopods_base_url")
    @classmethod
    def _origin(cls, value: str) -> str:
        if urlsplit(value).path not in ("", "/"):
            # The client adds /api/v1/whatsapp/messages itself.
            raise ValueError("has a path")
        return value

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if urlsplit(value.get_secret_value()).scheme not in ("amqp", "amqps"):
            raise ValueError("not an amqp:// or amqps:// URL")
        return value

    @field_validator("sentry_dsn")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            Dsn(value.get_secret_value())
        except BadDsn as error:
            raise ValueError(f"not a valid DSN ({error})") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a redis:// or rediss:// URL")
        return value

    @field_validator("octopods_api_key", "resend_hook_secret", "sentry_dsn")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("empty")
        return value

    @field_validator("resend_hook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret.startswith("whsec_"):
            raise ValueError("missing the whsec_ prefix")
        encoded = secret.removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error as error:
            raise ValueError("not base64 after whsec_") from error
        if len(key) < 16:
            raise ValueError("shorter than 16 bytes once decoded")
        return value

    @model_validator(mode="after")
    def _dedup_outlives_age(self) -> Settings:
        if self.dedup_ttl_s < self.max_message_age_s:
            # A record that expired before its message stops being resendable
            # would let a later poll resend the message again.
            raise ValueError(
                f"RETRIER_DEDUP_TTL={self.dedup_ttl_s} is shorter than RETRIER_MAX_MESSAGE_AGE="
                f"{self.max_message_age_s:g}: expected a dedup TTL at least as long as the maximum age"
            )
        return self

    def require(self, *names: str) -> None:
        """Raise ConfigError naming the first of ``names`` (variables) that is unset."""
        fields = {
            "OCTOPODS_API_KEY": self.octopods_api_key,
            "RESEND_HOOK_URL": self.resend_hook_url,
        }
        for name in names:
            if fields[name] is None:
                raise ConfigError(f"missing setting {name}: expected {EXPECTED[name]}")

    def secrets(self) -> list[str]:
        """Return the secret values this process holds, for the redactor."""
        values = [self.octopods_api_key, self.resend_hook_secret, self.sentry_dsn]
        found = [value.get_secret_value() for value in values if value is not None]
        urls = [self.redis_url, self.broker_url.get_secret_value() if self.broker_url else ""]
        found.extend(password for url in urls if (password := urlsplit(url).password))
        if self.sentry_dsn is not None:
            # The DSN's public key alone is enough to post events.
            dsn_key = urlsplit(self.sentry_dsn.get_secret_value()).username
            if dsn_key:
                found.append(dsn_key)
        return found


def load_settings(**overrides: Any) -> Settings:
    """Read the settings and register their secrets with the redactor.

    Raises:
        ConfigError: one line per invalid variable, joined with '; ', each naming
            the variable, its value (masked for secrets) and what is expected.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    redactor.add_secrets(settings.secrets())
    return settings


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        if not item["loc"]:  # a check across settings names them itself
            problems.append(str(item.get("msg", "invalid")).removeprefix("Value error, "))
            continue
        name = str(item["loc"][0]).upper()
        value = item.get("input")
        shown = mask_secret(str(value)) if name in SECRET_VARIABLES else repr(value)
        reason = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        expected = EXPECTED.get(name, "a valid value")
        problems.append(f"invalid setting {name}={shown} ({reason}): expected {expected}")
    return "; ".join(problems)
