"""What the store can hold: JSON values checked before they are written (issue 11).

Python's ``json`` (FastAPI's request parser) accepts ``NaN``, ``Infinity``, ``1e400`` and lone
surrogates (``"\\ud800"``); PostgreSQL refuses NUL in text and jsonb, nothing can encode a lone
surrogate as UTF-8, and orjson (the stream and the PostgreSQL batch path) writes at most 254
levels of nesting though it reads 1,024. ``problem`` names the first such value in a request
field, so the API answers 422 with the field instead of failing with a 500 at the store;
``split_storable`` keeps a provider batch's good events and sets aside the ones that cannot be
written, as text (``dump_any_depth``), to be dead-lettered.

>>> problem({"a": [1.5, float("nan")]}, "properties")
'properties.a[1]: NaN and Infinity are not JSON numbers'
>>> problem("Ann\\x00", "first_name")
'first_name: NUL characters are not allowed'
>>> split_storable([{"ok": 1}, {"bad": "\\x00"}])
([{'ok': 1}], [('{"bad":"\\\\u0000"}', 'bad: NUL characters are not allowed')])
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from pydantic import BaseModel, ValidationInfo, field_validator

MAX_DEPTH = 64
"""Deepest nesting taken in a request field (orjson writes at most 254 levels)."""


def _key(path: str, key: Any) -> str:
    text = str(key)
    if text.isidentifier():
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text)}]"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogates (\\ud800-\\udfff) are not text"
    return None


def problem(value: Any, path: str, *, max_depth: int = MAX_DEPTH) -> str | None:
    """The first value under ``path`` the store cannot hold, described; None if all is well.

    Walks without recursion, so a value nested deeper than Python's recursion limit is
    reported rather than raised on."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            why = _text_problem(item)
            if why is not None:
                return f"{where}: {why}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where}: NaN and Infinity are not JSON numbers"
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return f"{where}: nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    name = _key(where, key)
                    if isinstance(key, str):
                        why = _text_problem(key)
                        if why is not None:
                            return f"{name} (the key): {why}"
                    children.append((child, name, depth + 1))
                stack.extend(reversed(children))
            else:
                stack.extend(
                    (c, f"{where}[{i}]", depth + 1) for i, c in reversed(list(enumerate(item)))
                )
    return None


class StorableModel(BaseModel):
    """A request model whose every field is checked with ``problem`` (422 naming the field)."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        why = problem(value, info.field_name or "")
        if why is not None:
            raise ValueError(why)
        return value


def split_storable(events: list[Any]) -> tuple[list[Any], list[tuple[str, str]]]:
    """``(events the store can hold, [(event as JSON text, why not)])``.

    One orjson pass over the whole batch decides the common case (no NUL escape in the
    output: nothing to look at); only a batch that fails it is looked at event by event. An
    event is checked inside two levels of wrapping, as the stream (``{"events": [...]}``) and
    the PostgreSQL batch statement (``[{"p": ...}]``) write it."""
    try:
        if b"\\u0000" not in orjson.dumps({"events": events}):
            return events, []
    except orjson.JSONEncodeError:
        pass
    good: list[Any] = []
    dead: list[tuple[str, str]] = []
    for event in events:
        try:
            orjson.dumps([{"p": event}])
            text = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:
            dead.append((dump_any_depth(event), f"not writable as JSON: {exc}"))
            continue
        why = problem(event, "", max_depth=10**6) if b"\\u0000" in text else None
        if why is None:
            good.append(event)
        else:
            dead.append((text.decode(), why.lstrip(".")))
    return good, dead


class _Raw(str):
    """Text already written (a separator), as opposed to a value still to write."""


def dump_any_depth(value: Any) -> str:
    """Compact JSON text of ``value`` at any depth (orjson and ``json`` stop short of 1,024).

    >>> dump_any_depth({"a": [1, {"b": None}]})
    '{"a":[1,{"b":null}]}'
    """
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("{")]
            for i, (key, child) in enumerate(item.items()):
                parts.append(_Raw(("," if i else "") + json.dumps(str(key)) + ":"))
                parts.append(child)
            parts.append(_Raw("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list | tuple):
            parts = [_Raw("[")]
            for i, child in enumerate(item):
                if i:
                    parts.append(_Raw(","))
                parts.append(child)
            parts.append(_Raw("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item, default=str))
    return "".join(out)
