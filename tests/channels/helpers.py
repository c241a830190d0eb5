"""Outbox rows and messages for the channel tests."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select

from tidings.channels.base import RetryPolicy
from tidings.channels.types import OutboundEmail, OutboundSms
from tidings.crm.db import session_scope
from tidings.crm.models import Contact, Message

FAST = RetryPolicy(max_attempts=4, base=0.001, cap=0.01, max_retry_after=5.0)


def email(n: int, **overrides: object) -> OutboundEmail:
    fields: dict[str, object] = {
        "message_id": str(n),
        "idempotency_key": f"journey:welcome:step1:contact{n}",
        "to": f"user{n}@example.com",
        "from_email": "news@shop.example",
        "from_name": "Shop News",
        "subject": f"Hello {n}",
        "html": f"<p>Hello <b>{n}</b></p>",
        "text": f"Hello {n}",
        "headers": {
            "List-Unsubscribe": f"<https://t.shop.example/u/{n}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "categories": ("welcome", "journey:welcome"),
        "reply_to": "help@shop.example",
        "metadata": {"journey": "welcome"},
    }
    fields.update(overrides)
    return OutboundEmail(**fields)  # type: ignore[arg-type]


def sms(n: int, **overrides: object) -> OutboundSms:
    fields: dict[str, object] = {
        "message_id": str(n),
        "idempotency_key": f"order:{n}:shipped",
        "to": f"+1415555{n:04d}",
        "body": f"Your order {n} has shipped",
        "from_number": "+15005550006",
    }
    fields.update(overrides)
    return OutboundSms(**fields)  # type: ignore[arg-type]


def outbox_rows(engine: Engine, addresses: list[str], *, channel: str = "email") -> list[str]:
    """One contact and one queued message row per address; the message ids, as str."""
    with session_scope(engine) as session:
        ids = []
        for i, address in enumerate(addresses):
            contact_id = session.scalar(
                insert(Contact).values(external_id=f"c{i}", email=address).returning(Contact.id)
            )
            message_id = session.scalar(
                insert(Message)
                .values(
                    idempotency_key=f"k{i}",
                    contact_id=contact_id,
                    channel=channel,
                    to_address=address,
                    status="in_flight",
                )
                .returning(Message.id)
            )
            ids.append(str(message_id))
        return ids


def message_rows(engine: Engine) -> dict[str, Message]:
    with session_scope(engine) as session:
        return {str(m.id): m for m in session.scalars(select(Message))}
