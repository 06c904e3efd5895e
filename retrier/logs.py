"""Log output: one logfmt line per event on stdout, secrets and phone numbers masked.

Log calls use a fixed message as the event name and put the details in
``extra``; a line reads (wrapped here)::

    time=2026-04-24T10:19:02.123Z level=info logger=retrier.actors
    event="resend retry scheduled" message_id=3851827 rule=service-unavailable
    attempt=1 delay_s=31.2
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from retrier.redact import redactor

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(char in text for char in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    """Formats a record as ``key=value`` pairs, masked by the process redactor."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        pairs = [
            ("time", f"{moment}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("event", record.getMessage()),
        ]
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                pairs.append((key, value))
        if record.exc_info:
            error = record.exc_info[1]
            pairs.append(("error", f"{type(error).__name__}: {error}"))
            pairs.append(("traceback", self.formatException(record.exc_info)))
        # Values are masked before quoting, so that escaping cannot hide a secret.
        line = " ".join(f"{key}={_quote(redactor.text(str(value)))}" for key, value in pairs)
        return redactor.text(line)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line of the process to ``stream`` (stdout) as logfmt."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Dramatiq's own lines are useful at WARNING and above; its INFO is chatty.
    logging.getLogger("dramatiq").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.WARNING)  # logs every connection at INFO
    logging.getLogger("httpcore").setLevel(logging.WARNING)
