"""Exact SMS segment counting (3GPP TS 23.038 GSM 7-bit default alphabet, or UCS-2).

A message whose every character is in the GSM 03.38 basic table (1 septet) or its extension
table (2 septets: an escape plus the character) is sent as GSM-7: 160 septets fit one SMS, a
longer message is split into parts of 153 (7 septets go to the concatenation header). One
character outside both tables switches the *whole* message to UCS-2: 70 UTF-16 code units in one
SMS, 67 per part; an emoji outside the BMP is two code units. A part never ends in the middle of
an escape sequence or a surrogate pair, so counts can exceed a plain division:

>>> count_segments("Hello {name}")
SmsCount(encoding='GSM-7', segments=1, characters=12, units=14)
>>> count_segments("Menú del día 😀").encoding, count_segments("Menú del día 😀").segments
('UCS-2', 1)
>>> count_segments("a" * 152 + "€" + "a" * 152).segments  # 306 septets, yet 3 parts
3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# GSM 03.38 default alphabet, in table order 0x00-0x7F (0x1B is the escape, left out here).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs two septets (escape + code).
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

Encoding = Literal["GSM-7", "UCS-2"]
LIMITS: dict[str, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


@dataclass(frozen=True, slots=True)
class SmsCount:
    """``units`` are septets (GSM-7) or UTF-16 code units (UCS-2)."""

    encoding: Encoding
    segments: int
    characters: int
    units: int


def encoding_for(text: str) -> Encoding:
    """GSM-7 if every character is in the basic or extension table, else UCS-2."""
    for char in text:
        if char not in GSM_BASIC and char not in GSM_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def non_gsm_characters(text: str) -> list[str]:
    """The characters that force UCS-2, in order of first appearance (for previews)."""
    seen: dict[str, None] = {}
    for char in text:
        if char not in GSM_BASIC and char not in GSM_EXTENSION:
            seen.setdefault(char, None)
    return list(seen)


def _unit_costs(text: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if char in GSM_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def count_segments(text: str) -> SmsCount:
    """Encoding, number of SMS parts, characters (code points) and units of ``text``.

    >>> count_segments("a" * 160).segments, count_segments("a" * 161).segments
    (1, 2)
    >>> count_segments("").segments
    0
    """
    encoding = encoding_for(text)
    costs = _unit_costs(text, encoding)
    units = sum(costs)
    single, part = LIMITS[encoding]
    if units == 0:
        segments = 0
    elif units <= single:
        segments = 1
    else:
        segments, used = 1, 0
        for cost in costs:  # greedy packing; an escape pair or surrogate pair never splits
            if used + cost > part:
                segments, used = segments + 1, 0
            used += cost
    return SmsCount(encoding, segments, len(text), units)


def split_parts(text: str) -> list[str]:
    """The message cut where a phone would cut it (for previews).

    >>> [len(p) for p in split_parts("a" * 161)]
    [153, 8]
    """
    encoding = encoding_for(text)
    single, part = LIMITS[encoding]
    costs = _unit_costs(text, encoding)
    if sum(costs) <= single:
        return [text] if text else []
    parts: list[str] = []
    start, used = 0, 0
    for i, cost in enumerate(costs):
        if used + cost > part:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts
