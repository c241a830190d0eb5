"""A Twilio Messages API server on loopback, for the official SDK.

``POST /2010-04-01/Accounts/{Sid}/Messages.json`` (form-encoded, basic auth with the account
SID and auth token) answers 201 with a message resource shaped like Twilio's; numbers in
``unsubscribed`` get 400 code 21610, malformed ones 21211; ``fail_next`` programs 429 (code
20429, Retry-After) or 5xx. ``GET`` on the same list filters by To, From and DateSent and pages
like Twilio (``messages`` plus ``first_page_uri``, ``next_page_uri``...), for reconciliation.

>>> with TwilioSimulator() as sim:                                     # doctest: +SKIP
...     client = Client(sim.account_sid, sim.auth_token); client.api.base_url = sim.url
...     client.messages.create(to="+14155550100", from_="+15005550006", body="Hi").sid
'SM...'
"""

from __future__ import annotations

import base64
import re
import secrets
import urllib.parse
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from tests.simulators.http import Recorded, Reply, SimulatorServer

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
API = "/2010-04-01/Accounts/{sid}/Messages.json"
GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = set("^{}\\[~]|€\f")


def num_segments(body: str) -> int:
    """Segments as Twilio counts them (GSM-7 160/153, else UCS-2 70/67)."""
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in body):
        units, single, multi = sum(2 if c in GSM_EXTENSION else 1 for c in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else -(-units // multi)


def _error(status: int, code: int, message: str) -> Reply:
    return Reply(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


class TwilioSimulator(SimulatorServer):
    """``unsubscribed`` (set of numbers -> 21610), ``fail_next``, ``messages`` created."""

    def __init__(
        self, *, account_sid: str = "AC" + "0" * 31 + "1", auth_token: str = "test-token"
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.unsubscribed: set[str] = set()
        self.messages: list[dict[str, Any]] = []
        self.failing_lists = 0  # the next N GETs of the message list answer 500

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.messages.clear()

    @property
    def creates(self) -> list[Recorded]:
        return [
            r for r in self.requests if r.method == "POST" and r.path.endswith("/Messages.json")
        ]

    def handle(self, request: Recorded) -> Reply:
        if request.path != API.format(sid=self.account_sid):
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return _error(401, 20003, "Authenticate")
        if request.method == "GET":
            return self._list(request)
        if request.method != "POST":
            return _error(405, 20004, "Method not allowed")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(request.body.decode()).items()}
        request.parsed = form
        failure = self._next_failure()
        if failure is not None:
            if failure.status == 429:
                reply = _error(429, 20429, "Too Many Requests")
                wait = failure.retry_after if failure.retry_after is not None else 1
                reply.headers["Retry-After"] = f"{wait:g}"
                return reply
            return _error(failure.status, 20500, "An internal server error has occurred")
        return self._create(form)

    def _create(self, form: dict[str, str]) -> Reply:
        to, sender, service = form.get("To"), form.get("From"), form.get("MessagingServiceSid")
        body = form.get("Body")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not E164.match(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not sender and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return _error(400, 21602, "Message body is required.")
        if to in self.unsubscribed:
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        now = datetime.now(UTC)
        sid = "SM" + secrets.token_hex(16)
        message = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": format_datetime(now),
            "date_sent": format_datetime(now),
            "date_updated": format_datetime(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(num_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if sender else "accepted",
            "subresource_uris": {
                "media": API.format(sid=self.account_sid).replace(".json", f"/{sid}/Media.json")
            },
            "to": to,
            "uri": API.format(sid=self.account_sid).replace(".json", f"/{sid}.json"),
            "status_callback": form.get("StatusCallback"),
            "_date": now.date().isoformat(),
        }
        with self.lock:
            self.messages.append(message)
        return Reply(201, {k: v for k, v in message.items() if not k.startswith("_")})

    def _list(self, request: Recorded) -> Reply:
        with self.lock:
            failing, self.failing_lists = self.failing_lists > 0, max(0, self.failing_lists - 1)
        if failing:
            return _error(500, 20500, "An internal server error has occurred")
        q = {k: v[-1] for k, v in request.query.items()}
        with self.lock:
            found = list(reversed(self.messages))  # newest first, as Twilio lists
        if "To" in q:
            found = [m for m in found if m["to"] == q["To"]]
        if "From" in q:
            found = [m for m in found if m["from"] == q["From"]]
        if "DateSent" in q:
            found = [m for m in found if m["_date"] == q["DateSent"][:10]]
        if "DateSent<" in q:
            found = [m for m in found if m["_date"] <= q["DateSent<"][:10]]
        if "DateSent>" in q:
            found = [m for m in found if m["_date"] >= q["DateSent>"][:10]]
        size, page = int(q.get("PageSize", 50)), int(q.get("Page", 0))
        chunk = found[page * size : (page + 1) * size]
        base = API.format(sid=self.account_sid)

        def uri(number: int) -> str:
            params = {k: v for k, v in q.items() if k not in ("Page", "PageToken")}
            params.update(Page=str(number), PageSize=str(size))
            return f"{base}?{urllib.parse.urlencode(params)}"

        more = (page + 1) * size < len(found)
        return Reply(
            200,
            {
                "messages": [{k: v for k, v in m.items() if not k.startswith("_")} for m in chunk],
                "end": page * size + max(len(chunk) - 1, 0),
                "first_page_uri": uri(0),
                "next_page_uri": uri(page + 1) if more else None,
                "previous_page_uri": uri(page - 1) if page else None,
                "page": page,
                "page_size": size,
                "start": page * size,
                "uri": uri(page),
            },
        )
