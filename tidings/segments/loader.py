"""Load segment YAML files with errors that name file, line, key and a fix.

>>> catalog = load_catalog(settings.segments_dir)  # doctest: +SKIP
>>> catalog.core("engaged_buyers")      # doctest: +SKIP

Every error of a file is reported at once (one :class:`SegmentErrors`, an ``InputError`` whose
``errors`` lists each ``file:line:col`` problem). References between segments are checked when
the catalog is built: an unknown name, or a cycle (``a -> b -> a``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidings.crm.topics import Topics, load_topics
from tidings.errors import InputError
from tidings.segments import core as core_nodes
from tidings.segments.rules import COUNT_HINT, KINDS, OPERATORS, Segment, SegmentRule
from tidings.yamlfile import InputErrors, Marked, load_yaml, validation_errors, where

_VOCABULARY = sorted(
    {
        *KINDS,
        *OPERATORS,
        "performed",
        "count",
        "where",
        "journey",
        "step",
        "channel",
        "purpose",
        "name",
        "materialised",
        "percent",
        "seed",
        "weights",
        "part",
        "for",
        "template",
        "total_spend",
        "average_value",
        "last_order",
        "first_order",
        "status",
        "description",
        "rule",
        "churn_risk",
        "clv_90d",
        "rfm_segment",
        "scores_model_version",
        "scored_at",
    }
)


class SegmentErrors(InputErrors):
    """All the problems found in one file (or catalog); ``errors`` holds each of them."""


def _hint(error: Any, data: Any) -> str | None:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _VOCABULARY, n=1)
        return f"did you mean {close[0]!r}?" if close else "remove it, or check the reference"
    if kind == "unknown_rule" and isinstance(error.get("input"), dict):
        for key in error["input"]:
            close = difflib.get_close_matches(str(key), list(KINDS), n=1)
            if close:
                return f"did you mean {close[0]!r}?"
        return "a rule starts with one of: " + ", ".join(KINDS)
    if "a count" in str(error.get("msg", "")):
        return COUNT_HINT
    if "duration" in str(error.get("msg", "")):
        text = str(error.get("input", ""))
        unit = text.split()[-1] if text.split() else ""
        close = difflib.get_close_matches(unit.lower(), ["minutes", "hours", "days", "weeks"], 1)
        if close:
            return f"did you mean '{text.rsplit(unit, 1)[0].strip()} {close[0]}'?"
        return "write a number and a unit, e.g. '30 days', '2 weeks', '12 hours'"
    return None


def parse_segment(data: Any, *, source: str = "<inline>") -> Segment:
    """Validate one segment document (already parsed YAML, ideally with marks)."""
    try:
        return Segment.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc, data, source=source, hint=lambda e: _hint(e, data))
        raise SegmentErrors(errors) from None


def load_text(text: str, *, source: str = "<inline>") -> tuple[Segment, Any]:
    data = load_yaml(text, source=source)
    if not isinstance(data, dict):
        raise InputError("a segment file is a mapping with name and rule", location=source)
    return parse_segment(data, source=source), data


def load_file(path: Path) -> Segment:
    """One segment file (its references are not checked: use :func:`load_catalog`)."""
    return load_text(path.read_text(encoding="utf-8"), source=str(path))[0]


def _references(
    data: Any, mark: tuple[int, int] | None = None
) -> Iterable[tuple[str, bool, tuple[int, int] | None]]:
    """(name, materialised, mark) of every ``segment:`` reference in a rule document."""
    if isinstance(data, Marked):
        for key, value in data.items():
            here = data.marks.get(key, mark)
            if key == "where":  # event property filters: their keys are data, not rules
                continue
            if key == "segment":
                ref = SegmentRule.model_validate({"segment": value}).segment
                yield ref.name, ref.materialised, here
            else:
                yield from _references(value, here)
    elif isinstance(data, list):
        for item in data:
            yield from _references(item, mark)


def _topic_refs(
    data: Any, mark: tuple[int, int] | None = None
) -> Iterable[tuple[str, str, tuple[int, int] | None]]:
    """(topic, channel, mark) of every ``topic:`` rule in a rule document."""
    if isinstance(data, Marked):
        for key, value in data.items():
            here = data.marks.get(key, mark)
            if key == "where":
                continue
            if key == "topic" and isinstance(value, str | dict):
                spec = value if isinstance(value, dict) else {"name": value}
                yield str(spec.get("name")), str(spec.get("channel", "email")), here
            else:
                yield from _topic_refs(value, here)
    elif isinstance(data, list):
        for item in data:
            yield from _topic_refs(item, mark)


@dataclass
class Catalog:
    """Segments by name, with references checked; ``core(name)`` inlines references."""

    segments: dict[str, Segment] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[InputError] = field(default_factory=list)
    """What was left out when loaded with ``strict=False`` (bad files and what needs them)."""
    topics: Topics = field(default_factory=Topics)
    """The project's subscription topics (``topic:`` rules)."""

    def topic_default(self, name: str, channel: str) -> bool:
        topic = self.topics.get(name)
        if channel not in topic.channels:
            raise InputError(
                f"topic: {name!r} is not offered on {channel}",
                location=self.topics.source,
                hint=f"its channels: {', '.join(topic.channels)}",
            )
        return topic.subscribed_by_default

    def get(self, name: str) -> Segment:
        try:
            return self.segments[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.segments), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(self.segments)}"
            raise InputError(f"no segment named {name!r}", hint=hint) from None

    def core(self, name_or_segment: str | Segment) -> core_nodes.Core:
        seg = self.get(name_or_segment) if isinstance(name_or_segment, str) else name_or_segment
        return self._core(seg, ())

    def _core(self, seg: Segment, stack: tuple[str, ...]) -> core_nodes.Core:
        if seg.name in stack:
            cycle = " -> ".join([*stack[stack.index(seg.name) :], seg.name])
            raise InputError(f"segments reference each other in a cycle: {cycle}")
        return core_nodes.to_core(
            seg.rule,
            lambda ref: self._core(self.get(ref), (*stack, seg.name)),
            self.topic_default,
        )


def check_references(catalog: Catalog, documents: dict[str, tuple[str, Any]]) -> list[InputError]:
    """Unknown references and cycles, each at the ``segment:`` key that makes it."""
    errors: list[InputError] = []
    graph: dict[str, list[tuple[str, tuple[int, int] | None]]] = {}
    for name, (source, data) in documents.items():
        graph[name] = []
        for ref, materialised, mark in _references(data.get("rule")):
            if ref not in catalog.segments:
                close = difflib.get_close_matches(ref, list(catalog.segments), n=1)
                errors.append(
                    InputError(
                        f"segment: unknown segment {ref!r}",
                        location=where(source, mark),
                        hint=f"did you mean {close[0]!r}?" if close else "define it in segments/",
                    )
                )
            elif not materialised:
                graph[name].append((ref, mark))
    for source, data in documents.values():
        for topic, channel, mark in _topic_refs(data.get("rule")):
            try:
                catalog.topic_default(topic, channel)
            except InputError as exc:
                message = (
                    exc.message if exc.message.startswith("topic:") else f"topic: {exc.message}"
                )
                errors.append(InputError(message, location=where(source, mark), hint=exc.hint))
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        for ref, mark in graph.get(name, []):
            if ref in path or ref == name:
                cycle = [*path[path.index(ref) :], name, ref] if ref != name else [name, ref]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    source = documents[name][0]
                    errors.append(
                        InputError(
                            f"segment: reference cycle {' -> '.join(cycle)}",
                            location=where(source, mark),
                            hint="a segment cannot contain itself; use 'materialised: true' to "
                            "read the stored membership instead, or remove one reference",
                        )
                    )
            else:
                visit(ref, [*path, name])

    for name in graph:
        visit(name, [])
    return errors


def load_catalog(directory: Path, extra: Iterable[Path] = (), *, strict: bool = True) -> Catalog:
    """Every ``*.yaml`` / ``*.yml`` segment in ``directory`` (plus ``extra`` files).

    ``strict`` (``segment validate``, ``journey validate``): any problem raises
    :class:`SegmentErrors`. Otherwise (a running worker) a file with a problem, and every segment
    that refers to one, is left out and its problems kept in ``Catalog.problems``: one typo does
    not stop the others.
    """
    catalog = Catalog(topics=load_topics(directory.parent))
    documents: dict[str, tuple[str, Any]] = {}
    errors: list[InputError] = []
    paths = (
        sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []
    )
    for path in [*paths, *extra]:
        try:
            seg, data = load_text(path.read_text(encoding="utf-8"), source=str(path))
        except SegmentErrors as exc:
            errors += exc.errors
            continue
        except InputError as exc:
            errors.append(exc)
            continue
        if seg.name in catalog.segments:
            errors.append(
                InputError(
                    f"name: segment {seg.name!r} is defined twice",
                    location=where(str(path), data.marks.get("name")),
                    hint=f"also in {catalog.sources[seg.name]}",
                )
            )
            continue
        catalog.segments[seg.name] = seg
        catalog.sources[seg.name] = str(path)
        documents[seg.name] = (str(path), data)
    if strict:
        errors += check_references(catalog, documents)
        if errors:
            raise SegmentErrors(errors)
        return catalog
    while broken := check_references(catalog, documents):
        errors += broken
        for problem in broken:
            source = (problem.location or "").split(":")[0]
            for name in [n for n, s in catalog.sources.items() if s == source]:
                del catalog.segments[name], catalog.sources[name], documents[name]
    catalog.problems = errors
    return catalog
