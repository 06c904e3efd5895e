"""retrier: resend failed WhatsApp messages sent through the Octopods API, by rules."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retrier")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
