"""The columns each import knows, and the header check that runs before any row is read.

An unknown column that looks like a known one (``E-Mail``, ``phone_number``, ``amount`` in an
orders file) is almost always that column misspelt: imported as an attribute it would leave
every contact without an email, every order without a total. So the import stops on the
header and names the column and the one it probably means, unless the caller allows extra
columns (``--allow-extra-columns``); a required column that is missing is one header error,
not one error per row.

>>> CONTACTS.suggestion("E-Mail"), CONTACTS.suggestion("plan"), ORDERS.suggestion("amount")
('email', None, 'total')
>>> CONTACTS.check_header(["external_id", "E-Mail"], "c.csv:1", allow_extra=False)
Traceback (most recent call last):
...
tidings.errors.InputError: c.csv:1: column 'E-Mail' is unknown in contacts files: did you mean 'email'? (hint: rename it, or pass --allow-extra-columns to keep it as a contact attribute)
"""  # noqa: E501

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tidings.errors import InputError

#: Names people give a known column, normalized (lower case, ``_`` for spaces and dashes).
#: A name maps to a column only in an import that has that column.
ALIASES: dict[str, str] = {
    **dict.fromkeys(
        ("e_mail", "mail", "email_address", "e_mail_address", "emailaddress", "emails"), "email"
    ),
    **dict.fromkeys(
        (
            "phone_number",
            "phonenumber",
            "phone_no",
            "mobile",
            "mobile_phone",
            "mobile_number",
            "cell",
            "cell_phone",
            "telephone",
            "tel",
            "msisdn",
        ),
        "phone",
    ),
    **dict.fromkeys(("firstname", "first", "given_name", "forename"), "first_name"),
    **dict.fromkeys(("lastname", "last", "surname", "family_name"), "last_name"),
    **dict.fromkeys(("time_zone", "tz"), "timezone"),
    **dict.fromkeys(("language", "lang"), "locale"),
    **dict.fromkeys(("externalid", "ext_id", "customer_id", "customerid"), "external_id"),
    **dict.fromkeys(
        ("amount", "price", "order_total", "total_amount", "grand_total", "sum"), "total"
    ),
    **dict.fromkeys(("currency_code", "curr"), "currency"),
    **dict.fromkeys(("order_status", "state"), "status"),
    **dict.fromkeys(("order_number", "order_no", "orderid", "order_ref"), "order_id"),
    **dict.fromkeys(("order_date", "ordered_at", "purchased_at", "placed"), "placed_at"),
    **dict.fromkeys(("event", "event_name", "event_type"), "name"),
    **dict.fromkeys(("timestamp", "occurred", "time", "event_time"), "occurred_at"),
    **dict.fromkeys(("idempotency", "dedupe_key", "event_id"), "idempotency_key"),
}
SIMILARITY = 0.8  # difflib ratio from which an unknown name counts as a misspelling


def normalize(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.strip().lower())


@dataclass(frozen=True, slots=True)
class Columns:
    """What one import reads: its known columns and the groups of which one is required."""

    kind: str  # "contacts", "events", "orders"
    known: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]  # each group: at least one of these columns
    extra_as: str  # what an extra column becomes

    def suggestion(self, column: str) -> str | None:
        """The known column ``column`` probably means, or None when it is simply extra."""
        key = normalize(column)
        if column.strip().lower() in self.known:
            return None
        alias = ALIASES.get(key)
        if alias in self.known:
            return alias
        if key in self.known:  # "First Name", "E.mail"-like spellings of a known column
            return key
        close = difflib.get_close_matches(key, self.known, n=1, cutoff=SIMILARITY)
        return close[0] if close else None

    def suspicious(self, columns: Iterable[str]) -> list[tuple[str, str]]:
        """(column, suggestion) for each unknown column close to a known one that is absent.

        When the known column is there too (``email`` and ``emails``), the other one is taken
        as meant: it is an extra column.
        """
        present = {c.strip().lower() for c in columns}
        found = []
        for column in columns:
            known = self.suggestion(column)
            if known is not None and known not in present:
                found.append((column, known))
        return found

    def explain(self, column: str, known: str) -> str:
        return f"column {column!r} is unknown in {self.kind} files: did you mean {known!r}?"

    def check_header(self, columns: list[str], location: str, *, allow_extra: bool) -> None:
        """Raise one ``InputError`` naming every misspelt or missing column of a header."""
        if not allow_extra:
            found = self.suspicious(columns)
            if found:
                message = "; ".join(self.explain(c, k) for c, k in found)
                them = "it" if len(found) == 1 else "them"
                raise InputError(
                    message,
                    location=location,
                    hint=f"rename {them}, or pass --allow-extra-columns to keep {them} "
                    f"as {self.extra_as}",
                )
        present = {c.strip().lower() for c in columns}
        missing = [group for group in self.required if not present.intersection(group)]
        if missing:
            names = ", ".join(" or ".join(group) for group in missing)
            needs = ", ".join(" or ".join(group) for group in self.required)
            raise InputError(
                f"the header has no {names} column",
                location=location,
                hint=f"{self.kind} files need the columns {needs}; "
                f"this one has {', '.join(columns)}",
            )


CONTACT_COLUMNS = (
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "locale",
    "timezone",
    "consent_email",
    "consent_sms",
)
CONTACTS = Columns("contacts", CONTACT_COLUMNS, (("external_id", "email"),), "a contact attribute")
EVENTS = Columns(
    "events",
    ("external_id", "email", "name", "occurred_at", "idempotency_key"),
    (("external_id", "email"), ("name",), ("occurred_at",)),
    "an event property",
)
ORDERS = Columns(
    "orders",
    ("order_id", "external_id", "email", "total", "currency", "status", "placed_at"),
    (
        ("order_id",),
        ("external_id", "email"),
        ("total",),
        ("currency",),
        ("status",),
        ("placed_at",),
    ),
    "an order attribute",
)
