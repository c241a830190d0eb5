"""Subscription topics: named kinds of marketing (newsletter, product updates, offers) per channel.

The project lists them in ``channels/topics.yaml``; a journey (``topic: offers``) and a segment
rule (``topic: offers``) name them; the preference page lets a person choose them.

The rule, precisely. A marketing message of topic *T* on channel *C* is sent only if

1. the base consent (*C*, ``marketing``) is ``granted`` (as without topics), **and**
2. the contact is subscribed to *T* on *C*: their own choice (a ``topic_subscriptions`` row,
   ``granted`` or ``revoked``) if they made one, else the topic's ``default``: ``opt-out``
   topics count as subscribed, ``opt-in`` topics as not.

A topic can therefore only narrow the base consent, never widen it: revoking (*C*,
``marketing``) stops every topic on *C*, and subscribing to a topic does not grant the base
consent. Transactional messages have no topic. Every change of a choice is written to the
consent audit trail (``consent_changes`` with ``topic`` set, purpose ``marketing``).

>>> topics = parse_topics("offers:\\n  channels: [email]\\n  default: opt-in\\n", source="t.yaml")
>>> topics.get("offers").subscribed_by_default
False
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from sqlalchemy import Connection, Table, bindparam, insert, select, update

from tidings.crm.db import insert_ignore
from tidings.crm.models import ConsentChange, ConsentStatus, TopicSubscription
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.yamlfile import InputErrors, Marked, load_yaml, validation_errors, where

subscriptions_t: Table = TopicSubscription.__table__  # type: ignore[assignment]
changes_t: Table = ConsentChange.__table__  # type: ignore[assignment]

TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
TOPICS_FILE = Path("channels") / "topics.yaml"


def _texts(value: Any) -> Any:
    """``label: Offers`` is ``{"en": "Offers"}``; a mapping gives one text per language."""
    return {"en": value} if isinstance(value, str) else value


class TopicFile(BaseModel):
    """One topic in ``channels/topics.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[Literal["email", "sms"]] = Field(["email"], min_length=1)
    default: Literal["opt-in", "opt-out"] = Field(
        description="opt-in: nobody is subscribed until they choose it; opt-out: everyone with "
        "marketing consent on the channel is, until they leave it"
    )
    label: dict[str, str] = Field(
        default_factory=dict, description="a text, or one per language: {en: ..., de: ...}"
    )
    description: dict[str, str] = Field(default_factory=dict)

    @field_validator("label", "description", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _texts(value)


_DOCUMENT: TypeAdapter[dict[str, TopicFile]] = TypeAdapter(dict[str, TopicFile])


@dataclass(frozen=True)
class Topic:
    name: str
    channels: tuple[str, ...]
    default: str
    label: Mapping[str, str] = field(default_factory=dict)
    description: Mapping[str, str] = field(default_factory=dict)

    @property
    def subscribed_by_default(self) -> bool:
        return self.default == "opt-out"

    def text(self, which: Literal["label", "description"], language: str) -> str:
        """The label or description in ``language``, else English, else the topic's name."""
        texts = self.label if which == "label" else self.description
        fallback = self.name.replace("_", " ").capitalize() if which == "label" else ""
        return texts.get(language) or texts.get("en") or fallback


@dataclass(frozen=True)
class Topics:
    """The project's topics, in file order."""

    topics: tuple[Topic, ...] = ()
    source: str = str(TOPICS_FILE)

    def names(self) -> list[str]:
        return [t.name for t in self.topics]

    def find(self, name: str) -> Topic | None:
        return next((t for t in self.topics if t.name == name), None)

    def get(self, name: str) -> Topic:
        """The topic, or an ``InputError`` that names the known ones."""
        found = self.find(name)
        if found is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            known = ", ".join(self.names()) or "none yet"
            raise InputError(
                f"no subscription topic named {name!r}",
                location=self.source,
                hint=f"did you mean {close[0]!r}?" if close else f"topics defined: {known}",
            )
        return found

    def on(self, channel: str) -> list[Topic]:
        return [t for t in self.topics if channel in t.channels]


def parse_topics(text: str, *, source: str) -> Topics:
    """Topics from the text of a topics file; every problem names file, line and key."""
    data = load_yaml(text, source=source)
    if data is None:
        return Topics(source=source)
    if not isinstance(data, Marked):
        raise InputError(
            "a topics file is a mapping of topic names to their settings",
            location=f"{source}:1",
            hint="e.g. newsletter: {channels: [email], default: opt-out}",
        )
    errors: list[InputError] = []
    for name in data:
        if not isinstance(name, str) or not TOPIC_NAME.match(name):
            errors.append(
                InputError(
                    f"{name}: a topic name is lower case letters, digits and _ (at most 64)",
                    location=where(source, data.marks.get(name)),
                    hint="e.g. product_updates",
                )
            )
    try:
        parsed = _DOCUMENT.validate_python({k: {} if v is None else v for k, v in data.items()})
    except ValidationError as exc:
        errors += validation_errors(
            exc,
            data,
            source=source,
            hint=lambda _e: (
                "a topic's keys are: channels (email, sms), default (opt-in or "
                "opt-out), label, description"
            ),
        )
        parsed = {}
    if errors:
        raise InputErrors(errors)
    topics = (
        Topic(name, tuple(t.channels), t.default, t.label, t.description)
        for name, t in parsed.items()
    )
    return Topics(tuple(topics), source=source)


_CACHE: dict[Path, tuple[float, Topics]] = {}


def load_topics(project_dir: Path) -> Topics:
    """``channels/topics.yaml`` of the project (no file: no topics); re-read when it changes."""
    path = project_dir / TOPICS_FILE
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        return Topics(source=str(path))
    cached = _CACHE.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", location=str(path)) from exc
    topics = parse_topics(text, source=str(path))
    _CACHE[path] = (stamp, topics)
    return topics


# -- choices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicWish:
    contact_id: int
    channel: str
    topic: str
    status: str  # granted | revoked


def choices(conn: Connection, contact_ids: Iterable[int]) -> dict[tuple[int, str, str], str]:
    """The stored choices ``(contact, channel, topic) -> granted|revoked``."""
    ids = set(contact_ids)
    if not ids:
        return {}
    rows = conn.execute(
        select(
            subscriptions_t.c.contact_id,
            subscriptions_t.c.channel,
            subscriptions_t.c.topic,
            subscriptions_t.c.status,
        ).where(subscriptions_t.c.contact_id.in_(ids))
    )
    return {(r.contact_id, r.channel, r.topic): r.status for r in rows}


def subscribed(topic: Topic, choice: str | None) -> bool:
    """A contact's effective subscription to ``topic`` given their stored choice (or none)."""
    if choice is None:
        return topic.subscribed_by_default
    return choice == ConsentStatus.GRANTED.value


def set_topics(
    conn: Connection,
    topics: Topics,
    wishes: Iterable[TopicWish],
    *,
    source: str,
    now: datetime | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Bring topic choices to the wished status; a wish equal to the effective subscription
    (the stored choice, or the default) writes nothing. Each change is audited. Returns how
    many changed."""
    now = now or utcnow()
    wanted = {(w.contact_id, w.channel, w.topic): w for w in wishes}
    if not wanted:
        return 0
    stored = choices(conn, {k[0] for k in wanted})
    inserts, updates, audit = [], [], []
    for key, wish in wanted.items():
        topic = topics.get(wish.topic)
        if wish.channel not in topic.channels:
            raise InputError(f"topic {topic.name!r} is not offered on {wish.channel}")
        before = stored.get(key)
        if subscribed(topic, before) == (wish.status == ConsentStatus.GRANTED.value):
            continue
        values = {"status": wish.status, "source": source, "updated_at": now}
        if before is None:
            inserts.append({"contact_id": key[0], "channel": key[1], "topic": key[2], **values})
        else:
            updates.append({"_c": key[0], "_ch": key[1], "_t": key[2], **values})
        previous = before or (ConsentStatus.GRANTED.value if topic.subscribed_by_default else None)
        audit.append(
            {
                "contact_id": key[0],
                "channel": key[1],
                "purpose": "marketing",
                "topic": key[2],
                "status": wish.status,
                "previous_status": previous,
                "source": source,
                "occurred_at": now,
                "recorded_at": now,
                "detail": {**(detail or {}), **({"default": topic.default} if not before else {})},
            }
        )
    if inserts:
        conn.execute(insert_ignore(conn, subscriptions_t), inserts)
    if updates:
        conn.execute(
            update(subscriptions_t)
            .where(
                subscriptions_t.c.contact_id == bindparam("_c"),
                subscriptions_t.c.channel == bindparam("_ch"),
                subscriptions_t.c.topic == bindparam("_t"),
            )
            .values(
                status=bindparam("status"),
                source=bindparam("source"),
                updated_at=bindparam("updated_at"),
            ),
            updates,
        )
    if audit:
        conn.execute(insert(changes_t), audit)
    return len(audit)
