"""What the endpoints hand to the sink: ingest items, a tagged union on ``kind`` (STYLE.md 4).

An item is verified before it is made (web/webhooks.py, web/tracking.py, web/api.py) and is
JSON-able, so the Redis stream can carry it unchanged (web/buffer.py); ``kind`` travels as
``"k"``: ``sg`` (a SendGrid event batch), ``tw_status`` (a Twilio status callback), ``tw_in``
(an inbound SMS), ``track`` (an open or click) and ``events`` (event API posts). The store
(web/store.py) interprets them with an exhaustive ``match``.

>>> item = SendGridBatch(events=[{"event": "open", "sg_event_id": "e1"}])
>>> encode_item(item)
b'{"k":"sg","events":[{"event":"open","sg_event_id":"e1"}],"dead":[]}'
>>> decode_item(encode_item(item)) == item
True
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger("tidings.ingest")


class _Item(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SendGridBatch(_Item):
    """One Signed Event Webhook POST: SendGrid's events as they arrived (read by the store)."""

    kind: Literal["sg"] = Field("sg", alias="k")
    events: list[Any]
    dead: list[tuple[str, str]] = Field(default_factory=list)
    """Events of the batch the store cannot hold, ``(JSON text, why)``: dead-lettered."""


class TwilioStatus(_Item):
    """One Twilio status callback: its form and our message id from the callback URL."""

    kind: Literal["tw_status"] = Field("tw_status", alias="k")
    form: dict[str, str]
    message_id: str | None = None


class TwilioInbound(_Item):
    """One inbound SMS: its form and when the webhook arrived (ISO 8601; orders STOP/START)."""

    kind: Literal["tw_in"] = Field("tw_in", alias="k")
    form: dict[str, str]
    received_at: str | None = None


class TrackingHit(_Item):
    """An open or a click on a signed tracking token."""

    kind: Literal["track"] = Field("track", alias="k")
    id: str
    type: str
    message_id: str | None
    link_index: int | None
    url: str | None
    machine: bool
    user_agent: str
    method: str
    at: str

    def payload(self) -> dict[str, Any]:
        """What the event row keeps: everything but the kind, the id and the type."""
        return self.model_dump(exclude={"kind", "id", "type"})


class EventBatch(_Item):
    """Event API posts (``web/events.to_item`` dicts) for ``post_event``."""

    kind: Literal["events"] = Field("events", alias="k")
    events: list[dict[str, Any]]


IngestItem: TypeAlias = SendGridBatch | TwilioStatus | TwilioInbound | TrackingHit | EventBatch
_ITEM: TypeAdapter[IngestItem] = TypeAdapter(Annotated[IngestItem, Field(discriminator="kind")])


def encode_item(item: IngestItem) -> bytes:
    """The item as the JSON the stream carries (``kind`` as ``"k"``).

    Field by field rather than ``model_dump``: a SendGrid batch's events are written as they
    are, without a copy (a batch is up to a thousand events, on the webhook's hot path)."""
    fields: dict[str, Any] = {"k": item.kind}
    fields.update((name, getattr(item, name)) for name in type(item).model_fields if name != "kind")
    return orjson.dumps(fields)


def decode_item(data: bytes | str | dict[str, Any]) -> IngestItem | None:
    """An item from the stream; None (logged) when it is not one of ours."""
    try:
        raw = data if isinstance(data, dict) else orjson.loads(data)
        return _ITEM.validate_python(raw)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        log.warning("ingest item that is not one of ours skipped: %s", str(exc)[:300])
        return None
