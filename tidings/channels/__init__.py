"""Channel adapters: SendGrid, SMTP, Twilio and the outbox sandbox behind one interface.

>>> from tidings.config import Settings
>>> channel = get_channel("outbox", Settings(outbox_dir="/tmp/tidings-outbox"))
>>> channel.provider
'outbox'

Every adapter takes ``send_batch(messages) -> list[SendResult]`` (see ``channels.base``);
``channels.record.record_results`` writes the results to the outbox rows. Each provider is one
module, ``tidings.channels.<name>``: its adapter, its webhook verification and its event
vocabulary. ``REGISTRY`` names the adapter class of each; a new provider is one entry there
(the module is imported only when the channel is asked for, so importing this package stays
cheap).
"""

from __future__ import annotations

import difflib
import importlib
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

REGISTRY: dict[str, str] = {
    "sendgrid": "tidings.channels.sendgrid:SendGridChannel",
    "smtp": "tidings.channels.smtp:SmtpChannel",
    "twilio": "tidings.channels.twilio:TwilioChannel",
    "outbox": "tidings.channels.outbox:OutboxChannel",
}
"""Channel name -> ``module:class`` of its adapter (imported on first use)."""

CHANNELS = tuple(REGISTRY)
"""The registered channel names, in registry order."""


def channel_class(name: str) -> type[Channel[Any]]:
    """The adapter class registered as ``name``; ConfigurationError names the choices."""
    try:
        target = REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"unknown channel {name!r}; choose one of {', '.join(REGISTRY)}{hint}"
        ) from None
    module, _, attribute = target.partition(":")
    found: type[Channel[Any]] = getattr(importlib.import_module(module), attribute)
    return found


def get_channel(name: str, settings: Settings | None = None, **overrides: Any) -> Channel[Any]:
    """The adapter called ``name``, configured from ``settings`` (constructor args override)."""
    cls = channel_class(name)
    if settings is None:
        from tidings.config import get_settings

        settings = get_settings()
    return cls.from_settings(settings, **overrides)


def build_channels(settings: Settings) -> dict[str, Channel[Any]]:
    """The email and SMS channels the settings name (one adapter when both name the same).

    A missing credential is a ``ConfigurationError`` naming its variable; callers build the
    channels only when they are about to send (``Runtime.dispatcher``).
    """
    email = get_channel(settings.email_channel, settings)
    sms = (
        email
        if settings.sms_channel == settings.email_channel
        else get_channel(settings.sms_channel, settings)
    )
    return {"email": email, "sms": sms}


__all__ = [
    "CHANNELS",
    "REGISTRY",
    "Outbound",
    "OutboundEmail",
    "OutboundSms",
    "ProviderPermanentError",
    "ProviderRetryableError",
    "SendResult",
    "build_channels",
    "channel_class",
    "get_channel",
]
