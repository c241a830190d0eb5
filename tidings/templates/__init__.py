"""Email (MJML + Jinja2) and SMS (Jinja2) templates: compile once, render per contact.

>>> from tidings.templates import count_segments
>>> count_segments("Hi 😀").encoding
'UCS-2'

See docs/templates.md. ``Renderer`` is imported lazily so ``import templates`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.templates.sms import SmsCount, count_segments
from tidings.templates.tracking import InvalidTokenError, TrackingToken, sign_token, verify_token

if TYPE_CHECKING:
    from tidings.templates.render import RenderedEmail, RenderedSms, Renderer, TemplateRenderError

__all__ = [
    "InvalidTokenError",
    "RenderedEmail",
    "RenderedSms",
    "Renderer",
    "SmsCount",
    "TemplateRenderError",
    "TrackingToken",
    "count_segments",
    "sign_token",
    "verify_token",
]


def __getattr__(name: str) -> Any:
    if name in {"Renderer", "RenderedEmail", "RenderedSms", "TemplateRenderError"}:
        from tidings.templates import render

        return getattr(render, name)
    raise AttributeError(name)
