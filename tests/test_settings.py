"""Tests for retrier.settings: defaults, the environment, .env files and start-up errors."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from retrier.errors import ConfigError
from retrier.redact import redactor
from retrier.settings import Settings, load_settings
from tests.conftest import API_KEY, HOOK_SECRET

#: Every variable retrier reads. Each test starts with none of them set.
VARIABLES = [
    "OCTOPODS_API_KEY",
    "OCTOPODS_BASE_URL",
    "REDIS_URL",
    "REDIS_TLS_INSECURE",
    "RESEND_HOOK_URL",
    "RESEND_HOOK_SECRET",
    "RESEND_HOOK_TIMEOUT",
    "RETRIER_RULES_PATH",
    "RETRIER_POLL_INTERVAL",
    "RETRIER_MAX_MESSAGE_AGE",
    "RETRIER_DEDUP_TTL",
    "RETRIER_REDIS_PREFIX",
    "RETRIER_DRY_RUN",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "LOG_LEVEL",
]

SENTRY_DSN = "https://0123456789abcdef@o0.ingest.sentry.io/42"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Unset every retrier variable and work in an empty directory, so no .env is read."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def isolated_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the secrets a test registers, so later tests see the redactor unchanged."""
    monkeypatch.setattr(redactor, "_secrets", list(redactor._secrets))


def config_error(**overrides: Any) -> str:
    """Load settings, which must fail, and return the error message."""
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def secret_value(settings: Settings, attribute: str) -> str | None:
    value = getattr(settings, attribute)
    return None if value is None else value.get_secret_value()


# Defaults

DEFAULTS = [
    ("octopods_api_key", None),
    ("octopods_base_url", "https://app.octopods.io"),
    ("redis_url", "redis://localhost:6379/0"),
    ("redis_tls_insecure", False),
    ("resend_hook_url", None),
    ("resend_hook_secret", None),
    ("resend_hook_timeout_s", 10),
    ("rules_path", Path("config/rules.yaml")),
    ("poll_interval_s", 60),
    ("max_message_age_s", 86400),
    ("dedup_ttl_s", 604800),
    ("redis_prefix", "retrier"),
    ("dry_run", False),
    ("sentry_dsn", None),
    ("sentry_environment", None),
    ("log_level", "INFO"),
]


@pytest.mark.parametrize(("attribute", "expected"), DEFAULTS, ids=[case[0] for case in DEFAULTS])
def test_default(attribute: str, expected: Any) -> None:
    """With nothing set, each setting has its documented default."""
    assert getattr(load_settings(), attribute) == expected


# The environment

FROM_ENVIRONMENT = [
    ("OCTOPODS_BASE_URL", "http://127.0.0.1:8080", "octopods_base_url", "http://127.0.0.1:8080"),
    (
        "OCTOPODS_BASE_URL",
        "https://api.octopods.io/",
        "octopods_base_url",
        "https://api.octopods.io",
    ),
    (
        "REDIS_URL",
        "rediss://:pw@redis.example:6380/1",
        "redis_url",
        "rediss://:pw@redis.example:6380/1",
    ),
    ("REDIS_TLS_INSECURE", "true", "redis_tls_insecure", True),
    (
        "RESEND_HOOK_URL",
        "https://hooks.example/resend",
        "resend_hook_url",
        "https://hooks.example/resend",
    ),
    ("RESEND_HOOK_TIMEOUT", "2.5", "resend_hook_timeout_s", 2.5),
    (
        "RETRIER_RULES_PATH",
        "/etc/retrier/rules.yaml",
        "rules_path",
        Path("/etc/retrier/rules.yaml"),
    ),
    ("RETRIER_POLL_INTERVAL", "15", "poll_interval_s", 15),
    ("RETRIER_MAX_MESSAGE_AGE", "3600", "max_message_age_s", 3600),
    ("RETRIER_DEDUP_TTL", "172800", "dedup_ttl_s", 172800),
    ("RETRIER_REDIS_PREFIX", "staging:retrier", "redis_prefix", "staging:retrier"),
    ("RETRIER_DRY_RUN", "true", "dry_run", True),
    ("RETRIER_DRY_RUN", "1", "dry_run", True),
    ("SENTRY_ENVIRONMENT", "staging", "sentry_environment", "staging"),
    ("LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
    ("LOG_LEVEL", "warning", "log_level", "WARNING"),
]


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    FROM_ENVIRONMENT,
    ids=[f"{case[0]}={case[1]}" for case in FROM_ENVIRONMENT],
)
def test_from_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, raw)

    assert getattr(load_settings(), attribute) == expected


@pytest.mark.parametrize(
    ("variable", "raw", "attribute"),
    [
        ("OCTOPODS_API_KEY", API_KEY, "octopods_api_key"),
        ("RESEND_HOOK_SECRET", HOOK_SECRET, "resend_hook_secret"),
        ("SENTRY_DSN", SENTRY_DSN, "sentry_dsn"),
    ],
    ids=["api key", "hook secret", "sentry dsn"],
)
def test_secret_from_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, attribute: str
) -> None:
    monkeypatch.setenv(variable, raw)

    assert secret_value(load_settings(), attribute) == raw


def test_secret_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Printing the settings does not print the API key."""
    monkeypatch.setenv("OCTOPODS_API_KEY", API_KEY)

    assert API_KEY not in repr(load_settings())


def test_overrides_by_variable() -> None:
    """load_settings takes overrides named like the variables."""
    settings = load_settings(RETRIER_POLL_INTERVAL=5, RETRIER_DRY_RUN=True)

    assert settings.poll_interval_s == 5
    assert settings.dry_run is True


def test_dotenv_file(clean_environment: Path) -> None:
    """A .env file in the working directory is read."""
    (clean_environment / ".env").write_text(
        f"OCTOPODS_API_KEY={API_KEY}\nRETRIER_POLL_INTERVAL=30\nLOG_LEVEL=debug\n"
    )

    settings = load_settings()

    assert secret_value(settings, "octopods_api_key") == API_KEY
    assert settings.poll_interval_s == 30
    assert settings.log_level == "DEBUG"


def test_environment_beats_dotenv(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set in the environment wins over the same one in .env."""
    (clean_environment / ".env").write_text("RETRIER_POLL_INTERVAL=30\n")
    monkeypatch.setenv("RETRIER_POLL_INTERVAL", "45")

    assert load_settings().poll_interval_s == 45


def test_dotenv_invalid(clean_environment: Path) -> None:
    """An invalid value in .env is reported like one in the environment."""
    (clean_environment / ".env").write_text("RETRIER_POLL_INTERVAL=0\n")

    assert "RETRIER_POLL_INTERVAL" in config_error()


def test_secrets_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings hands the secrets it read to the redactor."""
    key = "octopods-key-only-in-test-settings-4Fq8"
    monkeypatch.setenv("OCTOPODS_API_KEY", key)

    load_settings()

    assert redactor.text(f"key={key}") == "key=[Filtered]"


def test_secrets_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """secrets() lists the key, the hook secret, the DSN, its public key and the Redis password."""
    monkeypatch.setenv("OCTOPODS_API_KEY", API_KEY)
    monkeypatch.setenv("RESEND_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("SENTRY_DSN", SENTRY_DSN)
    monkeypatch.setenv("REDIS_URL", "rediss://:redis-password-x7@redis.example:6380/0")

    secrets = load_settings().secrets()

    assert sorted(secrets) == sorted(
        [API_KEY, HOOK_SECRET, SENTRY_DSN, "0123456789abcdef", "redis-password-x7"]
    )


# Invalid values: (variable, value, text that states what is expected)
INVALID = [
    ("OCTOPODS_BASE_URL", "app.octopods.io", "http(s) origin"),
    ("OCTOPODS_BASE_URL", "ftp://app.octopods.io", "http(s) origin"),
    ("RESEND_HOOK_URL", "not a url", "http(s) URL"),
    ("RESEND_HOOK_URL", "https://", "http(s) URL"),
    ("REDIS_URL", "http://localhost:6379", "redis://"),
    ("REDIS_TLS_INSECURE", "perhaps", "true or false"),
    ("RESEND_HOOK_TIMEOUT", "ten", "from 0.1 to 25"),
    ("RESEND_HOOK_TIMEOUT", "0", "from 0.1 to 25"),
    ("RESEND_HOOK_TIMEOUT", "30", "from 0.1 to 25"),
    ("RETRIER_POLL_INTERVAL", "0", "from 1 to 3600"),
    ("RETRIER_POLL_INTERVAL", "-5", "from 1 to 3600"),
    ("RETRIER_POLL_INTERVAL", "1m", "from 1 to 3600"),
    ("RETRIER_MAX_MESSAGE_AGE", "-1", "above 0"),
    ("RETRIER_MAX_MESSAGE_AGE", "0", "above 0"),
    ("RETRIER_MAX_MESSAGE_AGE", "a day", "above 0"),
    ("RETRIER_DEDUP_TTL", "60", "from 3600 to"),
    ("RETRIER_DEDUP_TTL", "7200.5", "whole number"),
    ("RETRIER_DEDUP_TTL", "-7200", "from 3600 to"),
    ("RETRIER_REDIS_PREFIX", "bad prefix!", "letters, digits"),
    ("RETRIER_REDIS_PREFIX", "", "letters, digits"),
    ("RETRIER_REDIS_PREFIX", "p" * 65, "letters, digits"),
    ("RETRIER_DRY_RUN", "maybe", "true or false"),
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
]


#: How the "expected" part of each variable's error starts.
EXPECTED_START = {
    "OCTOPODS_BASE_URL": "an http(s) origin",
    "RESEND_HOOK_URL": "the http(s) URL",
    "REDIS_URL": "a redis://",
    "REDIS_TLS_INSECURE": "true or false",
    "RESEND_HOOK_TIMEOUT": "seconds",
    "RETRIER_POLL_INTERVAL": "seconds",
    "RETRIER_MAX_MESSAGE_AGE": "seconds",
    "RETRIER_DEDUP_TTL": "seconds",
    "RETRIER_REDIS_PREFIX": "letters",
    "RETRIER_DRY_RUN": "true or false",
    "LOG_LEVEL": "one of",
}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    INVALID,
    ids=[f"{case[0]}={case[1][:12]}" for case in INVALID],
)
def test_invalid_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    """The error is one line naming the variable, showing the value, saying what is expected."""
    monkeypatch.setenv(variable, value)

    message = config_error()

    assert "\n" not in message
    assert f"{variable}=" in message
    assert repr(value) in message
    assert f"expected {EXPECTED_START[variable]}" in message
    assert expected in message


# Invalid secrets: (variable, value, text that states what is expected)
INVALID_SECRETS = [
    ("OCTOPODS_API_KEY", "", "API key"),
    ("OCTOPODS_API_KEY", "   ", "API key"),
    ("RESEND_HOOK_SECRET", "", "whsec_"),
    ("RESEND_HOOK_SECRET", HOOK_SECRET.removeprefix("whsec_"), "whsec_"),
    ("RESEND_HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjU!D8ILPZIo2LaLaSw", "whsec_"),
    ("RESEND_HOOK_SECRET", "whsec_c2hvcnRrZXkxMjM0", "whsec_"),
    ("SENTRY_DSN", "  ", "Sentry DSN"),
]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    INVALID_SECRETS,
    ids=["empty key", "blank key", "empty whsec", "no prefix", "not base64", "short", "dsn"],
)
def test_invalid_secret(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    """An invalid secret is reported on one line, naming the variable and what is expected."""
    monkeypatch.setenv(variable, value)

    message = config_error()

    assert "\n" not in message
    assert f"invalid setting {variable}=" in message
    assert expected in message


@pytest.mark.parametrize(
    "value",
    [
        "whsec_MfKQ9r8GKYqrTwjU!D8ILPZIo2LaLaSw",
        "not-a-whsec-MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_c2hvcnRrZXkxMjM0",
    ],
    ids=["not base64", "no prefix", "short"],
)
def test_invalid_secret_masked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """The message shows at most the first characters of a secret."""
    monkeypatch.setenv("RESEND_HOOK_SECRET", value)

    message = config_error()

    assert value not in message
    assert value[8:] not in message
    assert f"RESEND_HOOK_SECRET='{value[:4]}***'" in message


def test_invalid_reason_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message states why a whsec secret is invalid."""
    monkeypatch.setenv("RESEND_HOOK_SECRET", "whsec_c2hvcnRrZXkxMjM0")

    assert "shorter than 16 bytes" in config_error()


def test_invalid_key_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid API key is not shown when another setting is invalid."""
    monkeypatch.setenv("OCTOPODS_API_KEY", API_KEY)
    monkeypatch.setenv("RETRIER_POLL_INTERVAL", "0")

    assert API_KEY not in config_error()


def test_several_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every invalid variable is reported, on one line."""
    monkeypatch.setenv("RETRIER_POLL_INTERVAL", "0")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    monkeypatch.setenv("REDIS_URL", "http://localhost:6379")

    message = config_error()

    assert "\n" not in message
    assert message.count("invalid setting ") == 3
    assert "RETRIER_POLL_INTERVAL='0'" in message
    assert "LOG_LEVEL='LOUD'" in message
    assert "REDIS_URL='http://localhost:6379'" in message


def test_invalid_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that fail to load register no secret with the redactor."""
    key = "octopods-key-never-loaded-9Wd2"
    monkeypatch.setenv("OCTOPODS_API_KEY", key)
    monkeypatch.setenv("LOG_LEVEL", "LOUD")

    config_error()

    assert redactor.text(key) == key


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(bytes(range(32))).decode(),
        "whsec_" + base64.b64encode(bytes(range(17))).decode().rstrip("="),
    ],
    ids=["32 bytes padded", "17 bytes unpadded"],
)
def test_whsec_other_lengths(secret: str) -> None:
    """A whsec secret that standardwebhooks accepts is accepted, whatever its key length."""
    Webhook(secret)

    settings = load_settings(RESEND_HOOK_SECRET=secret)

    assert secret_value(settings, "resend_hook_secret") == secret


def test_whsec_unpadded() -> None:
    """The usual 24-byte whsec secret is accepted."""
    settings = load_settings(RESEND_HOOK_SECRET=HOOK_SECRET)

    assert secret_value(settings, "resend_hook_secret") == HOOK_SECRET


# require()


@pytest.mark.parametrize("variable", ["OCTOPODS_API_KEY", "RESEND_HOOK_URL"])
def test_require_missing(variable: str) -> None:
    """require() names the missing variable and what it expects."""
    settings = load_settings()

    with pytest.raises(ConfigError) as caught:
        settings.require(variable)

    assert f"missing setting {variable}" in str(caught.value)
    assert "expected" in str(caught.value)


def test_require_first_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTOPODS_API_KEY", API_KEY)
    settings = load_settings()

    with pytest.raises(ConfigError, match="RESEND_HOOK_URL"):
        settings.require("OCTOPODS_API_KEY", "RESEND_HOOK_URL")


def test_require_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """require() returns without error when every named variable is set."""
    monkeypatch.setenv("OCTOPODS_API_KEY", API_KEY)
    monkeypatch.setenv("RESEND_HOOK_URL", "https://hooks.example/resend")

    load_settings().require("OCTOPODS_API_KEY", "RESEND_HOOK_URL")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RETRIER_POLL_INTERVAL", "inf", "a number from 1 to 3600"),
        ("RETRIER_POLL_INTERVAL", "1e300", "a number from 1 to 3600"),
        ("RETRIER_MAX_MESSAGE_AGE", "99999999", "at most 2592000"),
        ("RETRIER_DEDUP_TTL", "999999999", "from 3600 to 7776000"),
        ("OCTOPODS_BASE_URL", "http://127.0.0.1:9/api", "without a path"),
        ("SENTRY_DSN", "not-a-dsn-value", "a Sentry DSN"),
    ],
)
def test_out_of_range_values_rejected(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value)
    assert expected in str(caught.value)


def test_dedup_shorter_than_age_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A record must outlive the age at which its message can still be resent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRIER_DEDUP_TTL", "3600")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(
        "RETRIER_DEDUP_TTL=3600 is shorter than RETRIER_MAX_MESSAGE_AGE"
    )
