"""YAML documents that remember where each key was written, and errors that point there.

Journeys and segments are YAML files that people review and edit; an error must name the
file, line, column and key path and say what would fix it. ``load_yaml`` keeps the position of
every mapping key; ``validation_errors`` turns a pydantic ``ValidationError`` into one
``InputError`` per problem at the right place.

>>> data = load_yaml("a:\\n  b: 1\\n  c: [x, {d: 2}]\\n", source="f.yaml")
>>> locate(data, ("a", "c", 1, "d"))
((3, 11), ['a', 'c', '[1]', 'd'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import yaml
from pydantic import ValidationError

from tidings.errors import InputError

Mark = tuple[int, int]


class Marked(dict[Any, Any]):
    """A YAML mapping with the 1-based (line, column) of each key and of the mapping itself."""

    marks: dict[Any, Mark]
    start: Mark


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Marked:
    mapping = Marked()
    mapping.marks = {}
    mapping.start = (node.start_mark.line + 1, node.start_mark.column + 1)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in this mapping (again at line {line})",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.marks[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def where(source: str, mark: Mark | None) -> str:
    return f"{source}:{mark[0]}:{mark[1]}" if mark else source


def load_yaml(text: str, *, source: str) -> Any:
    """Parse YAML (safely) keeping key positions; a syntax error names file:line:column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = (mark.line + 1, mark.column + 1) if mark else None
        raise InputError(
            f"not valid YAML: {exc.problem or exc}",
            location=where(source, at),
            hint="check the indentation and quoting there",
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", location=source) from None


def locate(
    data: Any, loc: Iterable[str | int], *, at_value: bool = False
) -> tuple[Mark | None, list[str]]:
    """The position of the deepest key on a pydantic error location, and the key path to it.

    Parts of ``loc`` that are not keys of the data (tags of tagged unions, such as a step's
    ``type`` value) are skipped. With ``at_value`` the mark is the mapping's own start.
    """
    parts = tuple(loc)
    best: tuple[int, Mark | None, list[str]] = (-1, None, [])

    def walk(node: Any, i: int, mark: Mark | None, path: list[str]) -> None:
        nonlocal best
        if i > best[0]:
            here = node.start if at_value and isinstance(node, Marked) else mark
            best = (i, here, path)
        if i == len(parts):
            return
        part = parts[i]
        if isinstance(node, Marked) and part in node:
            walk(node[part], i + 1, node.marks.get(part, mark), [*path, str(part)])
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            item = node[part]
            walk(
                item, i + 1, item.start if isinstance(item, Marked) else mark, [*path, f"[{part}]"]
            )
        if isinstance(part, str) and isinstance(node, Marked):  # maybe a union tag: skip it
            walk(node, i + 1, mark, path)

    walk(data, 0, None, [])
    return best[1], best[2]


def key_path(path: list[str]) -> str:
    return ".".join(path).replace(".[", "[") or "(top)"


class InputErrors(InputError):
    """Every problem found in one document; ``errors`` holds each, ``str()`` lists them all."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first.message + more, location=first.location, hint=first.hint)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


Hinter = Callable[[dict[str, Any]], str | None]


def validation_errors(
    exc: ValidationError, data: Any, *, source: str, hint: Hinter | None = None
) -> list[InputError]:
    """One ``InputError`` per pydantic error, placed at its key in the YAML file."""
    errors = []
    for error in exc.errors():
        at_value = error["type"] in {"union_tag_invalid", "union_tag_not_found", "unknown_rule"}
        mark, path = locate(data, error["loc"], at_value=at_value)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {str(error['loc'][-1])!r}"
        elif error["type"] == "missing":
            message = f"{str(error['loc'][-1])!r} is required here"
        errors.append(
            InputError(
                f"{key_path(path)}: {message}",
                location=where(source, mark),
                hint=hint(dict(error)) if hint else None,
            )
        )
    return errors
