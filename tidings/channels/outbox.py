"""The sandbox channel: every message becomes files in a folder, nothing leaves the machine.

Email: ``<message_id>.eml`` (the full MIME message, as SMTP would send it) and a
``<message_id>.json`` sidecar; SMS: ``<message_id>.json``. Writes are atomic (temporary file,
then rename), and the name comes from our message id, so sending the same message again
overwrites its files instead of adding a duplicate. For demos, dry runs and reviews.

>>> import tempfile, pathlib
>>> from tidings.channels.types import OutboundSms
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> sms = OutboundSms("9", "k9", "+14155550100", "Hi")
>>> OutboxChannel(folder=folder).send_batch([sms])[0].status
'accepted'
>>> sorted(p.name for p in folder.iterdir())
['9.json']
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidings.channels.base import Channel
from tidings.channels.mime import message_id_header, mime_bytes
from tidings.channels.types import (
    Outbound,
    OutboundEmail,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_stem(message_id: str) -> str:
    """A file name from a message id; ids are ours (digits), anything else is made safe."""
    stem = _UNSAFE.sub("_", message_id).lstrip(".")
    if not stem:
        raise ValueError(f"message id {message_id!r} gives no usable file name")
    return stem


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OutboxChannel(Channel[Outbound]):
    provider = "outbox"

    def __init__(self, *, folder: str | Path = "outbox", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> OutboxChannel:
        options: dict[str, Any] = {"folder": settings.outbox_dir}
        options.update(overrides)
        return cls(**options)

    def build_payload(self, message: Outbound) -> dict[str, bytes]:
        stem = file_stem(message.message_id)
        if isinstance(message, OutboundEmail):
            sidecar = {
                "channel": "email",
                "message_id": message.message_id,
                "idempotency_key": message.idempotency_key,
                "to": message.to,
                "from_email": message.from_email,
                "from_name": message.from_name,
                "reply_to": message.reply_to,
                "subject": message.subject,
                "headers": message.headers,
                "categories": list(message.categories),
                "metadata": message.metadata,
                "message_id_header": message_id_header(message),
            }
            eml = mime_bytes(message, provider=self.provider)
            return {f"{stem}.eml": eml, f"{stem}.json": _json(sidecar)}
        sms = {
            "channel": "sms",
            "message_id": message.message_id,
            "idempotency_key": message.idempotency_key,
            "to": message.to,
            "from_number": message.from_number,
            "messaging_service_sid": message.messaging_service_sid,
            "body": message.body,
        }
        return {f"{stem}.json": _json(sms)}

    def post(self, message: Outbound, payload: dict[str, bytes]) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in payload.items():
            path = self.folder / name
            write_atomic(path, data)
            paths.append(path)
        return paths

    def parse_result(self, message: Outbound, response: list[Path]) -> SendResult:
        return SendResult(
            message_id=message.message_id,
            status="accepted",
            provider=self.provider,
            channel=message.channel,
            to=message.to,
            provider_message_id=f"outbox:{file_stem(message.message_id)}",
            raw={"files": [str(path) for path in response]},
        )

    def lookup(self, messages: Sequence[Outbound]) -> dict[str, str | None]:
        """Accepted when every file of the message is in the folder (each written atomically)."""
        found: dict[str, str | None] = {}
        for message in messages:
            names = self.build_payload(message)
            complete = all((self.folder / name).is_file() for name in names)
            stem = file_stem(message.message_id)
            found[message.message_id] = f"outbox:{stem}" if complete else None
        return found

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(error, OSError):
            return ProviderPermanentError(
                f"cannot write to {self.folder}: {error}", provider=self.provider
            )
        return None


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True).encode() + b"\n"
