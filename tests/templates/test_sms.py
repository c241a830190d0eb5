"""SMS segment counts against reference counts (GSM 03.38 / UCS-2 rules)."""

from __future__ import annotations

import pytest

from tidings.templates.sms import GSM_BASIC, GSM_EXTENSION, count_segments, split_parts

# (message, encoding, segments, characters, units) worked out by hand from the 3GPP tables.
TABLE = [
    ("Hello", "GSM-7", 1, 5, 5),
    ("", "GSM-7", 0, 0, 0),
    ("a" * 160, "GSM-7", 1, 160, 160),
    ("a" * 161, "GSM-7", 2, 161, 161),
    ("a" * 306, "GSM-7", 2, 306, 306),
    ("a" * 307, "GSM-7", 3, 307, 307),
    ("€" * 80, "GSM-7", 1, 80, 160),  # extension chars: 2 septets each
    ("€" * 81, "GSM-7", 2, 81, 162),
    ("[test] {x} ~ | \\ ^", "GSM-7", 1, 18, 26),  # 8 extension chars
    ("a" * 152 + "€", "GSM-7", 1, 153, 154),
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 3, 305, 306),  # escape pair never split: 152|153|1
    ("Café à Pâques", "UCS-2", 1, 13, 13),  # â is not in GSM 03.38
    ("Café à Paris, Ñandú", "UCS-2", 1, 19, 19),  # é, à, Ñ are GSM; ú is not
    ("Café à Paris, Ñoño", "GSM-7", 1, 18, 18),
    ("a" * 159 + "é", "GSM-7", 1, 160, 160),
    ("a" * 70 + "ú", "UCS-2", 2, 71, 71),
    ("a" * 70, "GSM-7", 1, 70, 70),
    ("ç", "UCS-2", 1, 1, 1),  # the table has capital Ç only
    ("Hi 😀", "UCS-2", 1, 4, 5),  # an emoji is a surrogate pair: 2 code units
    ("a" * 66 + "😀" + "a", "UCS-2", 1, 68, 69),
    ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3, 133, 134),  # pair never split: 66|67|1
    ("a" * 134, "GSM-7", 1, 134, 134),
    ("ú" * 134, "UCS-2", 2, 134, 134),
    ("ú" * 135, "UCS-2", 3, 135, 135),
    ("Привет", "UCS-2", 1, 6, 6),
    ("line\nbreak\r", "GSM-7", 1, 11, 11),
]


@pytest.mark.parametrize(("text", "encoding", "segments", "characters", "units"), TABLE)
def test_reference_counts(
    text: str, encoding: str, segments: int, characters: int, units: int
) -> None:
    count = count_segments(text)
    assert (count.encoding, count.segments, count.characters, count.units) == (
        encoding,
        segments,
        characters,
        units,
    )


@pytest.mark.parametrize(
    "text", ["a" * 152 + "€" + "a" * 152, "a" * 66 + "😀" + "a" * 66, "x" * 500, "€" * 200]
)
def test_parts_match_count_and_never_split_pairs(text: str) -> None:
    parts = split_parts(text)
    assert "".join(parts) == text
    assert len(parts) == count_segments(text).segments
    for part in parts:
        assert count_segments(part).units <= (
            153 if count_segments(text).encoding == "GSM-7" else 67
        )


def test_tables_have_the_spec_sizes() -> None:
    # 128 positions, minus the escape (0x1B); extension: 10 printable characters incl. form feed
    assert len(GSM_BASIC) == 127
    assert len(GSM_EXTENSION) == 10
    assert not GSM_BASIC & GSM_EXTENSION
