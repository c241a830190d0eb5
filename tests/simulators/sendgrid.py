"""A SendGrid ``/v3/mail/send`` server on loopback, for the official SDK.

Checks the Bearer key, validates the payload the way SendGrid does (400 with
``{"errors": [{"message", "field", "help"}]}``), answers 202 with ``X-Message-Id``, and keeps
a ``processed`` record per accepted message (custom_args included) so reconciliation can ask
"did you accept message X?". ``fail_next`` programs 429 (with Retry-After) or 5xx replies.

>>> with SendGridSimulator(api_key="SG.test") as sim:      # doctest: +SKIP
...     SendGridAPIClient("SG.test", host=sim.url).send(mail)
...     sim.accepted("42")["x_message_id"]
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.simulators.http import Recorded, Reply, SimulatorServer

EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
RESERVED_HEADERS = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
}  # fmt: skip


@dataclass
class Processed:
    x_message_id: str
    to: str
    subject: str
    custom_args: dict[str, str]
    categories: list[str]
    payload: dict[str, Any]


def _error(message: str, field: str | None, help_url: str | None = None) -> dict[str, Any]:
    return {"message": message, "field": field, "help": help_url}


MESSAGES = {
    "personalizations": "The personalizations field is required and must have at least one "
    "personalization.",
    "to": "The to array is required for all personalization objects, and must have at least "
    "one email object with a valid email address.",
    "address": "Does not contain a valid address.",
    "from": "The from object must be provided for every email send. It is an object that "
    "requires the email parameter, but may also contain a name parameter.",
    "from.email": "The from email does not contain a valid address.",
    "subject": "The subject is required. You can get around this requirement if you use a "
    "template with a subject defined or if every personalization has a subject defined.",
    "content": "Unless a valid template_id is provided, the content parameter is required. "
    "There must be at least one defined content block. We typically suggest both text/plain "
    "and text/html blocks are included, but only one block is required.",
    "content.value": "The content value must be a string at least one character in length.",
    "content.order": "If present, text/plain content must be first, followed by text/html, "
    "followed by any other content.",
    "categories": "Too many categories. A maximum of 10 categories are allowed.",
}


def validate(payload: Any) -> list[dict[str, Any]]:
    """The validation errors SendGrid would report for ``payload`` (empty: valid)."""
    if not isinstance(payload, dict):
        return [_error("Bad Request", None)]
    errors: list[dict[str, Any]] = []
    personalizations = payload.get("personalizations")
    if not personalizations:
        errors.append(_error(MESSAGES["personalizations"], "personalizations"))
    for i, item in enumerate(personalizations or []):
        if not item.get("to"):
            errors.append(_error(MESSAGES["to"], f"personalizations.{i}.to"))
        for j, to in enumerate(item.get("to", [])):
            if not EMAIL.match(str(to.get("email", ""))):
                field = f"personalizations.{i}.to.{j}.email"
                errors.append(_error(MESSAGES["address"], field))
    sender = payload.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        errors.append(_error(MESSAGES["from"], "from"))
    elif not EMAIL.match(str(sender["email"])):
        errors.append(_error(MESSAGES["from.email"], "from.email"))
    if not payload.get("template_id"):
        each_has_subject = bool(personalizations) and all(
            p.get("subject") for p in personalizations or []
        )
        if not payload.get("subject") and not each_has_subject:
            errors.append(_error(MESSAGES["subject"], "subject"))
        content = payload.get("content")
        if not content:
            errors.append(_error(MESSAGES["content"], "content"))
        for k, block in enumerate(content or []):
            if not block.get("value"):
                errors.append(_error(MESSAGES["content.value"], f"content.{k}.value"))
        types = [block.get("type") for block in content or []]
        if "text/plain" in types and types.index("text/plain") != 0:
            errors.append(_error(MESSAGES["content.order"], "content"))
    if len(payload.get("categories") or []) > 10:
        errors.append(_error(MESSAGES["categories"], "categories"))
    for name, value in (payload.get("custom_args") or {}).items():
        if not isinstance(value, str):
            kind = type(value).__name__
            message = f"Invalid type. Expected: string, given: {kind}."
            errors.append(_error(message, f"custom_args.{name}"))
    for name, value in (payload.get("headers") or {}).items():
        if name.lower() in RESERVED_HEADERS:
            errors.append(_error(f"The header {name} is reserved and cannot be set.", "headers"))
        elif not isinstance(value, str):
            errors.append(_error("Invalid type. Expected: string.", f"headers.{name}"))
    return errors


class SendGridSimulator(SimulatorServer):
    """``fail_next(n, status=429, retry_after=1)``; ``accepted(id)``; ``processed`` list;
    ``hang_after_accept(n, seconds)``: the next n sends are accepted, then the answer is held
    back (a client that times out cannot tell whether SendGrid has the message)."""

    def __init__(self, *, api_key: str = "SG.test-key", keep: bool = True) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.processed: list[Processed] = []
        self._by_message_id: dict[str, Processed] = {}
        self._all_by_message_id: dict[str, list[Processed]] = {}
        self._hangs: deque[float] = deque()

    def hang_after_accept(self, count: int, seconds: float) -> None:
        with self.lock:
            self._hangs.extend([seconds] * count)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.processed.clear()
            self._by_message_id.clear()
            self._all_by_message_id.clear()

    def processed_by(self, tidings_message_id: str) -> list[Processed]:
        """Every accepted message carrying this id (more than one would be a double send)."""
        return list(self._all_by_message_id.get(tidings_message_id, []))

    def accepted(self, tidings_message_id: str) -> Processed | None:
        """The accepted message carrying ``custom_args.tidings_message_id``, if any."""
        with self.lock:
            return self._by_message_id.get(tidings_message_id)

    @property
    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v3/mail/send"]

    def _activity(self, request: Recorded) -> Reply:
        """``GET /v3/messages?query=unique_args['k']="v"`` (the Email Activity API)."""
        query = (request.query.get("query") or [""])[0]
        match = re.fullmatch(r"unique_args\['([^']+)'\]=\"([^\"]*)\"", query.strip())
        if match is None:
            return Reply(400, {"errors": [_error("invalid query", "query")]})
        key, value = match.groups()
        with self.lock:
            if key == "tidings_message_id":  # indexed, like the real feed's message search
                hits = [p for p in self.processed_by(value)]
            else:
                hits = [p for p in self.processed if p.custom_args.get(key) == value]
        return Reply(
            200,
            {
                "messages": [
                    {
                        "msg_id": p.x_message_id,
                        "to_email": p.to,
                        "subject": p.subject,
                        "status": "processed",
                        "opens_count": 0,
                        "clicks_count": 0,
                    }
                    for p in hits[: int((request.query.get("limit") or ["10"])[0])]
                ]
            },
        )

    def handle(self, request: Recorded) -> Reply:
        if request.path == "/v3/messages" and request.method == "GET":
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return Reply(401, {"errors": [_error("unauthorized", None)]})
            return self._activity(request)
        if request.path != "/v3/mail/send" or request.method != "POST":
            return Reply(404, {"errors": [_error("resource not found", None)]})
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(
                401,
                {
                    "errors": [
                        _error(
                            "The provided authorization grant is invalid, expired, or revoked", None
                        )
                    ]
                },
            )
        failure = self._next_failure()
        if failure is not None:
            headers = {}
            if failure.status == 429:
                wait = failure.retry_after if failure.retry_after is not None else 1
                headers = {
                    "Retry-After": f"{wait:g}",
                    "X-RateLimit-Limit": "600",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(time.time() + wait)),
                }
                return Reply(429, {"errors": [_error("too many requests", None)]}, headers)
            return Reply(failure.status, {"errors": [_error("internal error", None)]})
        try:
            payload = json.loads(request.body)
        except ValueError:
            return Reply(400, {"errors": [_error("Bad Request", None)]})
        request.parsed = payload
        errors = validate(payload)
        if errors:
            return Reply(400, {"errors": errors})
        x_message_id = secrets.token_urlsafe(16)
        for personalization in payload["personalizations"] if self.keep else ():
            args = {**payload.get("custom_args", {}), **personalization.get("custom_args", {})}
            record = Processed(
                x_message_id=x_message_id,
                to=personalization["to"][0]["email"],
                subject=personalization.get("subject") or payload.get("subject", ""),
                custom_args=args,
                categories=list(payload.get("categories", [])),
                payload=payload,
            )
            with self.lock:
                self.processed.append(record)
                if "tidings_message_id" in args:
                    self._by_message_id[args["tidings_message_id"]] = record
                    self._all_by_message_id.setdefault(args["tidings_message_id"], []).append(
                        record
                    )
        with self.lock:
            hang = self._hangs.popleft() if self._hangs else 0.0
        if hang:
            time.sleep(hang)
        return Reply(202, None, {"X-Message-Id": x_message_id})
