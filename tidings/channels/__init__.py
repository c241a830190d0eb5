"""Channel adapters: SendGrid, SMTP, Twilio and the outbox sandbox behind one interface.

>>> from tidings.config import Settings
>>> channel = get_channel("outbox", Settings(outbox_dir="/tmp/tidings-outbox"))
>>> channel.provider
'outbox'

Every adapter takes ``send_batch(messages) -> list[SendResult]`` (see ``channels.base``);
``channels.record.record_results`` writes the results to the outbox rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.channels.types import (
    Outbound,
    OutboundEmail,
    OutboundSms,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.channels.base import Channel
    from tidings.config import Settings

CHANNELS = ("sendgrid", "smtp", "twilio", "outbox")


def get_channel(name: str, settings: Settings | None = None, **overrides: Any) -> Channel[Any]:
    """The adapter called ``name``, configured from ``settings`` (constructor args override)."""
    if settings is None:
        from tidings.config import get_settings

        settings = get_settings()
    if name == "sendgrid":
        from tidings.channels.sendgrid import SendGridChannel

        return SendGridChannel.from_settings(settings, **overrides)
    if name == "smtp":
        from tidings.channels.smtp import SmtpChannel

        return SmtpChannel.from_settings(settings, **overrides)
    if name == "twilio":
        from tidings.channels.twilio import TwilioChannel

        return TwilioChannel.from_settings(settings, **overrides)
    if name == "outbox":
        from tidings.channels.outbox import OutboxChannel

        return OutboxChannel.from_settings(settings, **overrides)
    raise ConfigurationError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")


__all__ = [
    "CHANNELS",
    "Outbound",
    "OutboundEmail",
    "OutboundSms",
    "ProviderPermanentError",
    "ProviderRetryableError",
    "SendResult",
    "get_channel",
]
