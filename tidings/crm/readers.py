"""Stream records out of CSV and JSON Lines files, each with the line it started on.

CSV: UTF-8 with or without a BOM, ``,`` ``;`` or tab delimiter (sniffed from the header line),
LF or CRLF, quoted fields that span lines. JSON Lines: one object per line, blank lines skipped.
Nothing is loaded whole: records are yielded one at a time.

>>> import io
>>> list(read_csv(_Lines(io.BytesIO(b"a;b\\r\\n1;2\\r\\n")), name="x.csv"))
[Record(line=2, values={'a': '1', 'b': '2'})]
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tidings.errors import InputError

DELIMITERS = (",", ";", "\t")
FORMATS = ("csv", "jsonl")
ERROR = "__error__"  # key of a record that could not be read

HeaderCheck = Callable[[list[str], str], None]
"""Called with the columns of a CSV header and its location (``file:1``) before any row is
read; it raises ``InputError`` to stop the import."""


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    values: dict[str, Any]


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise InputError(f"unknown format {explicit!r}", hint="use csv or jsonl")
        return explicit
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv", ".txt"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    raise InputError(
        f"cannot tell the format of {path.name!r} from its extension",
        location=str(path),
        hint="name it .csv or .jsonl, or pass --format csv|jsonl",
    )


def sniff_delimiter(header: str) -> str:
    """The delimiter that splits the header line into the most columns (ties: ``,``)."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class _Lines:
    """Decode a binary file line by line, so one bad byte spoils one line, not the import."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.number = 0
        self.bad: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._handle.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad.add(self.number)
            return raw.decode("utf-8", errors="replace")


NOT_UTF8 = "is not valid UTF-8 (save the file as UTF-8)"


def read_csv(
    lines: _Lines, *, name: str, check_header: HeaderCheck | None = None
) -> Iterator[Record]:
    first = next(lines, "")
    if not first.strip():
        raise InputError(
            "the file is empty or its first line is blank",
            location=f"{name}:1",
            hint="the first line must name the columns",
        )
    if 1 in lines.bad:
        raise InputError("the header line " + NOT_UTF8, location=f"{name}:1")
    delimiter = sniff_delimiter(first)
    columns = [c.strip() for c in next(csv.reader([first], delimiter=delimiter))]
    seen: dict[str, int] = {}
    for index, column in enumerate(columns, start=1):
        if not column:
            raise InputError(
                f"column {index} has no name", location=f"{name}:1", hint="name every column"
            )
        if column.lower() in seen:
            raise InputError(
                f"column {column!r} appears twice (columns {seen[column.lower()]} and {index})",
                location=f"{name}:1",
                hint="remove or rename one of them",
            )
        seen[column.lower()] = index
    if check_header is not None:
        check_header(columns, f"{name}:1")
    reader = csv.reader(lines, delimiter=delimiter)
    end = 1  # a record starts on the line after the one the record before it ended on
    for row in reader:
        start, end = end + 1, lines.number
        if not "".join(row).strip():  # no cells, or only blank ones
            continue
        if lines.bad and any(n in lines.bad for n in range(start, end + 1)):
            yield Record(start, {ERROR: NOT_UTF8})
        elif len(row) != len(columns):
            yield Record(
                start,
                {
                    ERROR: f"has {len(row)} fields where the header has {len(columns)} "
                    f"(delimiter {delimiter!r})"
                },
            )
        else:
            yield Record(start, dict(zip(columns, row, strict=True)))


def read_jsonl(lines: _Lines, *, name: str) -> Iterator[Record]:
    for text in lines:
        number = lines.number
        if not text.strip():
            continue
        if number in lines.bad:
            yield Record(number, {ERROR: NOT_UTF8})
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(number, {ERROR: f"is not valid JSON: {exc.msg} at column {exc.colno}"})
            continue
        if not isinstance(value, dict):
            yield Record(number, {ERROR: "must be a JSON object"})
            continue
        yield Record(number, value)


def read_records(
    path: Path, fmt: str | None = None, *, check_header: HeaderCheck | None = None
) -> Iterator[Record]:
    """Yield the records of ``path``; a record whose values hold ``ERROR`` is a broken line.

    ``check_header`` sees the columns of a CSV file before its first row (JSON Lines has no
    header: each object's keys are the caller's to check).
    """
    kind = detect_format(path, fmt)
    if not path.is_file():
        raise InputError("no such file", location=str(path))
    with path.open("rb") as handle:
        lines = _Lines(handle)
        if kind == "csv":
            yield from read_csv(lines, name=str(path), check_header=check_header)
        else:
            yield from read_jsonl(lines, name=str(path))
