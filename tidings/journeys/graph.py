"""The step graph of a journey and the checks that need the whole of it.

Each problem is a ``Problem(path, message, hint)``; ``path`` is the key path in the YAML document
(``("steps", 2, "next")``) so the loader can point at the file, line and column.

>>> from tidings.journeys.schema import Journey
>>> journey = Journey.model_validate({"name": "j", "trigger": {"type": "api"}, "steps": [
...     {"id": "a", "type": "email", "template": "t", "next": "c"},
...     {"id": "b", "type": "exit"},
... ]})
>>> [p.message for p in check_graph(journey)]
["step 'a' goes to 'c', which is not a step of this journey", "step 'b' can never be reached"]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tidings.journeys.schema import (
    WAIT_STEPS,
    BranchStep,
    EmailStep,
    ExitStep,
    Journey,
    SmsStep,
    SplitStep,
    Step,
    UpdateContactStep,
    WaitForEventStep,
    WaitForSegmentStep,
    WaitStep,
    WaitUntilStep,
    WebhookStep,
)

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    hint: str | None = None


def following(journey: Journey, index: int) -> str | None:
    """The step written after ``index``, or ``None`` at the end (the journey ends there)."""
    return journey.steps[index + 1].id if index + 1 < len(journey.steps) else None


def edges(journey: Journey, index: int) -> Iterator[tuple[str | None, Path]]:
    """(target step id or None for the end, key path of the reference) for one step."""
    step: Step = journey.steps[index]
    here: Path = ("steps", index)
    default = step.next if step.next is not None else following(journey, index)
    match step:
        case EmailStep() | SmsStep() | WaitStep() | WaitUntilStep() | UpdateContactStep():
            yield default, (*here, "next")
        case WebhookStep():
            yield default, (*here, "next")
        case WaitForEventStep() | WaitForSegmentStep():
            yield default, (*here, "next")
            yield step.on_timeout, (*here, "on_timeout")
        case BranchStep():
            for n, branch in enumerate(step.branches):
                yield branch.next, (*here, "branches", n, "next")
            yield step.otherwise, (*here, "otherwise")
        case SplitStep():
            for n, path in enumerate(step.paths):
                yield path.next, (*here, "paths", n, "next")
        case ExitStep():
            return
        case _:  # pragma: no cover - exhaustive over Step
            raise AssertionError(f"unhandled step {step!r}")


def check_graph(journey: Journey) -> list[Problem]:
    problems: list[Problem] = []
    ids: dict[str, int] = {}
    for index, step in enumerate(journey.steps):
        if step.id in ids:
            problems.append(
                Problem(
                    ("steps", index, "id"),
                    f"step id {step.id!r} is used twice",
                    f"the first is step {ids[step.id] + 1}; rename one",
                )
            )
        ids.setdefault(step.id, index)
    for name, step_id, path in referenced_engagements(journey):
        if name == journey.name and step_id is not None and step_id not in ids:
            problems.append(missing_step(name, step_id, list(ids), path))
    graph: dict[str, list[str]] = {}
    for index, step in enumerate(journey.steps):
        targets = []
        for target, path in edges(journey, index):
            if target is None:
                continue
            if target not in ids:
                close = difflib.get_close_matches(target, list(ids), n=1)
                problems.append(
                    Problem(
                        path,
                        f"step {step.id!r} goes to {target!r}, which is not a step of this journey",
                        f"did you mean {close[0]!r}?" if close else None,
                    )
                )
            else:
                targets.append(target)
        graph.setdefault(step.id, targets)
    reached = _reachable(graph, journey.steps[0].id)
    for index, step in enumerate(journey.steps):
        if step.id not in reached and ids[step.id] == index:
            problems.append(
                Problem(
                    ("steps", index, "id"),
                    f"step {step.id!r} can never be reached",
                    "point a next, branch or path at it, or remove it",
                )
            )
    waits = {s.id for s in journey.steps if isinstance(s, WAIT_STEPS)}
    for cycle in _cycles_without(graph, waits):
        first = ids[cycle[0]]
        problems.append(
            Problem(
                ("steps", first, "id"),
                "loop without a wait: " + " -> ".join([*cycle, cycle[0]]),
                "put a wait, wait_until, wait_for_event or wait_for_segment step in the loop, "
                "or it would send without end",
            )
        )
    return problems


def _reachable(graph: dict[str, list[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for target in graph.get(stack.pop(), []):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _cycles_without(graph: dict[str, list[str]], waits: set[str]) -> list[list[str]]:
    """One cycle for each loop of non-wait steps (depth-first search over that subgraph)."""
    sub = {
        n: [t for t in targets if t not in waits] for n, targets in graph.items() if n not in waits
    }
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        path.append(node)
        for target in sub[node]:
            if target in path:
                cycle = path[path.index(target) :]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif target not in done:
                visit(target, path)
        path.pop()
        done.add(node)

    for root in sub:
        if root not in done:
            visit(root, [])
    return found


def sends(journey: Journey) -> list[tuple[int, EmailStep | SmsStep]]:
    return [(i, s) for i, s in enumerate(journey.steps) if isinstance(s, EmailStep | SmsStep)]


def referenced_segments(journey: Journey) -> list[tuple[str, Path]]:
    """Segment names the journey uses, with where: the trigger and ``segment:`` conditions."""
    found: list[tuple[str, Path]] = []
    segment = getattr(journey.trigger, "segment", None)
    if isinstance(segment, str):
        found.append((segment, ("trigger", "segment")))
    for index, step in enumerate(journey.steps):
        if isinstance(step, WaitForSegmentStep):
            found.append((step.segment, ("steps", index, "segment")))
        if isinstance(step, BranchStep):
            for n, branch in enumerate(step.branches):
                for name in _segment_refs(branch.when):
                    found.append((name, ("steps", index, "branches", n, "when")))
    return found


def referenced_engagements(journey: Journey) -> list[tuple[str | None, str | None, Path]]:
    """``(journey, step, where)`` of every engagement rule in the journey's branches
    (``opened: {journey: welcome, step: hello}``, ``clicked``, ``received``)."""
    found: list[tuple[str | None, str | None, Path]] = []
    for index, step in enumerate(journey.steps):
        if isinstance(step, BranchStep):
            for n, branch in enumerate(step.branches):
                for spec in _engagement_refs(branch.when):
                    found.append((spec.journey, spec.step, ("steps", index, "branches", n, "when")))
    return found


def missing_step(journey: str, step: str, steps: list[str], path: Path) -> Problem:
    close = difflib.get_close_matches(step, steps, n=1)
    return Problem(
        path,
        f"journey {journey!r} has no step {step!r}: this rule would never match",
        f"did you mean {close[0]!r}?" if close else f"its steps are: {', '.join(steps)}",
    )


def _engagement_refs(rule: Any) -> Iterator[Any]:
    from tidings.segments.rules import EngagementSpec

    if isinstance(rule, EngagementSpec):
        yield rule
        return
    for name in type(rule).model_fields if hasattr(type(rule), "model_fields") else ():
        value = getattr(rule, name)
        for item in value if isinstance(value, list) else [value]:
            if hasattr(type(item), "model_fields"):
                yield from _engagement_refs(item)


def _segment_refs(rule: Any) -> Iterator[str]:
    from tidings.segments.rules import SegmentRule

    if isinstance(rule, SegmentRule):
        yield rule.segment.name
    for name in type(rule).model_fields if hasattr(type(rule), "model_fields") else ():
        value = getattr(rule, name)
        for item in value if isinstance(value, list) else [value]:
            if hasattr(type(item), "model_fields"):
                yield from _segment_refs(item)
