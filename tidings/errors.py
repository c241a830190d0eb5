"""One error root for tidings (STYLE.md 3).

``TidingsError`` carries context; ``RetryableError`` and ``PermanentError`` split what a retry
loop may try again from what it must record and move past. ``ConfigurationError`` sits outside
the root on purpose: no retry loop that catches ``TidingsError`` may swallow a missing setting.

>>> try:
...     raise PermanentError("invalid address", provider="sendgrid", status=400)
... except TidingsError as exc:
...     exc.retryable, exc.context["status"]
(False, 400)
"""

from __future__ import annotations

from typing import Any


class TidingsError(Exception):
    """Root of every runtime error tidings raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
        return f"{self.message} ({details})"


class RetryableError(TidingsError):
    """Worth trying again later: 429, 5xx, timeouts, dropped connections."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after


class PermanentError(TidingsError):
    """Trying again cannot help: invalid address, unsubscribed recipient, malformed request."""


class ConfigurationError(Exception):
    """A setting is missing or wrong. Names the exact environment variable to fix."""


class InputError(Exception):
    """User input (a file, a YAML document, a CLI argument) is wrong.

    ``location`` is ``file:line`` (and column, key) so the user can go straight to it.
    """

    def __init__(self, message: str, *, location: str | None = None, hint: str | None = None):
        self.message = message
        self.location = location
        self.hint = hint
        text = f"{location}: {message}" if location else message
        if hint:
            text += f" (hint: {hint})"
        super().__init__(text)
