"""Load journey YAML files: every error with file:line:column, key path and a hint.

>>> journey = load_text('''
... name: hello
... trigger: {type: api}
... steps:
...   - {id: hi, type: email, template: welcome}
... ''', source="hello.yaml")
>>> journey.name, version_hash(journey)[:12]
('hello', '...')

Problems are gathered, not raised one by one: the schema's (unknown key, wrong type, bad
duration), the step graph's (unknown step reference, unreachable step, loop without a wait)
and, when ``references`` are given, those of the world around the journey (a template or
segment that does not exist).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from tidings.crm.topics import Topics
from tidings.errors import InputError
from tidings.journeys import schema
from tidings.journeys.graph import Path as GraphPath
from tidings.journeys.graph import (
    Problem,
    check_graph,
    missing_step,
    referenced_engagements,
    referenced_segments,
    sends,
)
from tidings.yamlfile import (
    InputErrors,
    Marked,
    key_path,
    load_yaml,
    locate,
    validation_errors,
    where,
)

STEP_TYPES = [
    get_args(m.model_fields["type"].annotation)[0] for m in get_args(get_args(schema.Step)[0])
]
TRIGGER_TYPES = [
    get_args(m.model_fields["type"].annotation)[0] for m in get_args(get_args(schema.Trigger)[0])
]


def _vocabulary() -> list[str]:
    names: set[str] = set()
    stack: list[type[BaseModel]] = [schema.Journey]
    seen: set[type[BaseModel]] = set()
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        names.update(model.model_fields)
        for info in model.model_fields.values():
            for arg in _flatten(info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    stack.append(arg)
    return sorted(names)


def _flatten(annotation: Any) -> Iterable[Any]:
    yield annotation
    for arg in get_args(annotation):
        yield from _flatten(arg)


VOCABULARY = _vocabulary()


def _hint(error: dict[str, Any]) -> str | None:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), VOCABULARY, n=1)
        return f"did you mean {close[0]!r}?" if close else "remove it"
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        choices = TRIGGER_TYPES if "trigger" in loc and "steps" not in loc else STEP_TYPES
        given = str(error.get("ctx", {}).get("tag", ""))
        close = difflib.get_close_matches(given, choices, n=1)
        prefix = f"did you mean {close[0]!r}? " if close else ""
        return prefix + "type is one of: " + ", ".join(choices)
    return None


@dataclass
class References:
    """What exists outside the journey: templates per channel, segment names, and the steps of
    the project's other journeys (None: not known, not checked)."""

    template_exists: Callable[[str, str], bool]
    segments: set[str] = field(default_factory=set)
    journeys: dict[str, list[str]] | None = None
    topics: Topics | None = None


def _reference_problems(journey: schema.Journey, refs: References) -> list[Problem]:
    problems = []
    for index, step in sends(journey):
        templates: list[tuple[str, GraphPath]] = [(step.template, ("steps", index, "template"))]
        if step.experiment:
            templates += [
                (v.template, ("steps", index, "experiment", "variants", n, "template"))
                for n, v in enumerate(step.experiment.variants)
                if v.template
            ]
        for name, path in templates:
            if not refs.template_exists(name, step.type):
                problems.append(
                    Problem(
                        path,
                        f"no {step.type} template named {name!r}",
                        f"name the template ({name.partition('.')[0]!r}): the contact's locale "
                        "picks its variant"
                        if "." in name
                        else "add it under templates/ or fix the name",
                    )
                )
    for other, step_id, where_ in referenced_engagements(journey):
        if refs.journeys is None or other is None or other == journey.name:
            continue
        if other not in refs.journeys:
            close = difflib.get_close_matches(other, sorted(refs.journeys), n=1)
            problems.append(
                Problem(
                    where_,
                    f"no journey named {other!r}: this rule would never match",
                    f"did you mean {close[0]!r}?" if close else "fix the name",
                )
            )
        elif step_id is not None and step_id not in refs.journeys[other]:
            problems.append(missing_step(other, step_id, refs.journeys[other], where_))
    if journey.topic is not None and refs.topics is not None:
        problems += _topic_problems(journey, journey.topic, refs.topics)
    for name, path in referenced_segments(journey):
        if name not in refs.segments:
            close = difflib.get_close_matches(name, sorted(refs.segments), n=1)
            problems.append(
                Problem(
                    path,
                    f"no segment named {name!r}",
                    f"did you mean {close[0]!r}?"
                    if close
                    else "add it under segments/ or fix the name",
                )
            )
    return problems


def _topic_problems(journey: schema.Journey, name: str, topics: Topics) -> list[Problem]:
    """The topic exists, and is offered on the channel of every marketing send step."""
    topic = topics.find(name)
    if topic is None:
        close = difflib.get_close_matches(name, topics.names(), n=1)
        known = ", ".join(topics.names()) or "none yet"
        hint = f"did you mean {close[0]!r}?" if close else f"topics in {topics.source}: {known}"
        return [Problem(("topic",), f"no subscription topic named {name!r}", hint)]
    return [
        Problem(
            ("steps", index, "type"),
            f"topic {name!r} is not offered on {step.type}, so this step could reach nobody",
            f"add {step.type} to the channels of {name!r} in {topics.source}, or give the step "
            "purpose: transactional",
        )
        for index, step in sends(journey)
        if step.type not in topic.channels and step.purpose != "transactional"
    ]


def _seed_problems(journey: schema.Journey) -> list[Problem]:
    problems = []
    if journey.seeds and not isinstance(journey.trigger, schema.ScheduleTrigger):
        problems.append(
            Problem(
                ("seeds",),
                f"seeds get a copy of each broadcast run, and this journey's trigger is "
                f"{journey.trigger.type!r}, not 'schedule': every contact's entry would copy "
                "the seeds",
                "remove seeds, and try a step with `tidings journey test-send`",
            )
        )
    seen: set[str] = set()
    for index, address in enumerate(journey.seeds):
        if address in seen:
            problems.append(Problem(("seeds", index), f"{address} is listed twice", "remove one"))
        seen.add(address)
    return problems


def _as_errors(problems: list[Problem], data: Any, source: str) -> list[InputError]:
    errors = []
    for problem in problems:
        mark, path = locate(data, problem.path)
        errors.append(
            InputError(
                f"{key_path(path)}: {problem.message}",
                location=where(source, mark),
                hint=problem.hint,
            )
        )
    return errors


def parse(data: Any, *, source: str, references: References | None = None) -> schema.Journey:
    if not isinstance(data, Marked | dict):
        raise InputError(
            "a journey file is a mapping with name, trigger and steps", location=source
        )
    try:
        journey = schema.Journey.model_validate(data)
    except ValidationError as exc:
        raise InputErrors(validation_errors(exc, data, source=source, hint=_hint)) from None
    problems = check_graph(journey) + _seed_problems(journey)
    if references is not None:
        problems += _reference_problems(journey, references)
    if problems:
        raise InputErrors(_as_errors(problems, data, source))
    return journey


def load_text(text: str, *, source: str, references: References | None = None) -> schema.Journey:
    return parse(load_yaml(text, source=source), source=source, references=references)


def load_file(path: Path, *, references: References | None = None) -> schema.Journey:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such journey file", location=str(path)) from None
    return load_text(text, source=str(path), references=references)


def journey_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())


def journey_steps(paths: list[Path]) -> dict[str, list[str]]:
    """Name -> step ids of every journey among ``paths`` that parses (for rules that name
    another journey's step); a file that does not parse is reported where it is loaded."""
    steps: dict[str, list[str]] = {}
    for path in paths:
        try:
            journey = load_file(path)
        except InputError:
            continue
        steps[journey.name] = [step.id for step in journey.steps]
    return steps


def version_hash(journey: schema.Journey) -> str:
    """Identifies a version by meaning: reformatting or comments do not make a new version.
    Keys left at their defaults are not part of it, so a key added to the language later
    (topic, seeds, an experiment's rule) makes no new version of a journey that does not use
    it."""
    dumped = journey.model_dump(mode="json", exclude_defaults=True)
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
