"""Journey YAML: valid files load; every mistake is reported at its file:line:column."""

from __future__ import annotations

import textwrap

import pytest

from tidings.errors import InputError
from tidings.journeys.loader import References, load_text, version_hash
from tidings.yamlfile import InputErrors

VALID = """\
name: welcome
trigger:
  type: segment
  segment: new_signups
settings:
  reentry: {after: 90 days}
  goal: {event: order.placed, within: 14 days}
  quiet_hours: {start: "21:00", end: "08:00"}
steps:
  - id: hello
    type: email
    template: welcome
    experiment:
      variants:
        - {name: A, weight: 50}
        - {name: B, weight: 50}
      holdout: 10
  - id: pause
    type: wait
    duration: 2 days
  - id: engaged
    type: branch
    branches:
      - when: {opened: {journey: welcome, step: hello}}
        next: thanks
    otherwise: nudge
  - id: nudge
    type: sms
    template: order_shipped
    next: done
  - id: thanks
    type: email
    template: welcome
  - id: done
    type: exit
"""

REFS = References(
    template_exists=lambda name, channel: (
        (name, channel) in {("welcome", "email"), ("order_shipped", "sms")}
    ),
    segments={"new_signups", "vip"},
)


def errors_of(text: str, refs: References | None = REFS) -> list[str]:
    with pytest.raises(InputError) as info:
        load_text(textwrap.dedent(text), source="j.yaml", references=refs)
    error = info.value
    return [str(e) for e in error.errors] if isinstance(error, InputErrors) else [str(error)]


def test_valid_journey_loads() -> None:
    journey = load_text(VALID, source="j.yaml", references=REFS)
    assert [s.id for s in journey.steps] == ["hello", "pause", "engaged", "nudge", "thanks", "done"]
    assert journey.settings.goal is not None and journey.settings.goal.within == 14 * 86400


def test_version_hash_ignores_formatting_but_not_meaning() -> None:
    base = version_hash(load_text(VALID, source="j.yaml"))
    reformatted = VALID.replace("duration: 2 days", "duration: '2 days'  # a comment")
    assert version_hash(load_text(reformatted, source="j.yaml")) == base
    changed = VALID.replace("duration: 2 days", "duration: 3 days")
    assert version_hash(load_text(changed, source="j.yaml")) != base


def test_unknown_step_reference_names_line_and_suggests() -> None:
    [error] = errors_of(VALID.replace("next: done", "next: doen"))
    assert error.startswith("j.yaml:30:5: steps[3].next: step 'nudge' goes to 'doen'")
    assert "did you mean 'done'?" in error


def test_unreachable_step() -> None:
    text = VALID.replace("        next: thanks\n", "        next: nudge\n")
    assert errors_of(text) == [
        "j.yaml:31:5: steps[4].id: step 'thanks' can never be reached "
        "(hint: point a next, branch or path at it, or remove it)"
    ]


def test_loop_without_a_wait() -> None:
    text = """\
    name: spin
    trigger: {type: api}
    steps:
      - {id: a, type: email, template: welcome}
      - {id: b, type: branch, branches: [{when: {segment: vip}, next: a}], otherwise: c}
      - {id: c, type: exit}
    """
    [error] = errors_of(text)
    assert "loop without a wait: a -> b -> a" in error and error.startswith("j.yaml:4:")


def test_bad_duration_and_unknown_step_type_and_typo_all_reported() -> None:
    text = """\
    name: sloppy
    trigger: {type: api}
    steps:
      - id: a
        type: wait
        duration: 3 dayz
      - id: b
        type: emial
        template: welcome
      - id: c
        type: sms
        templte: order_shipped
    """
    errors = errors_of(text)
    assert errors[0].startswith("j.yaml:6:5: steps[0].duration: bad duration '3 dayz'")
    assert "unknown unit 'dayz'" in errors[0]
    assert errors[1].startswith("j.yaml:7:5: steps[1]:")
    assert "did you mean 'email'?" in errors[1]
    assert any(
        e.startswith("j.yaml:12:5: steps[2].templte: unknown key 'templte'")
        and "did you mean 'template'?" in e
        for e in errors
    )


def test_missing_template_and_segment() -> None:
    text = VALID.replace("template: order_shipped", "template: shipped").replace(
        "segment: new_signups", "segment: new_signup"
    )
    errors = errors_of(text)
    assert "j.yaml:4:3: trigger.segment: no segment named 'new_signup' " in errors[1]
    assert "did you mean 'new_signups'?" in errors[1]
    assert errors[0].startswith("j.yaml:29:5: steps[3].template: no sms template named 'shipped'")


def test_times_and_yaml_syntax() -> None:
    [error] = errors_of(VALID.replace('start: "21:00"', 'start: "25:00"'))
    assert error.startswith("j.yaml:8:17: settings.quiet_hours.start: bad time of day '25:00'")
    [error] = errors_of("name: x\nsteps: [\n")
    assert error.startswith("j.yaml:3:1: not valid YAML")
    [error] = errors_of("name: x\nname: y\n")
    assert "appears twice" in error and error.startswith("j.yaml:2:1")


def test_a_stored_definition_validates_back_to_the_same_journey() -> None:
    """The engine reloads versions from the store: model -> JSON -> model is lossless."""
    journey = load_text(VALID, source="j.yaml")
    dumped = journey.model_dump(mode="json")
    assert dumped["steps"][1]["duration"] == "2 days"
    assert dumped["settings"]["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    again = type(journey).model_validate(dumped)
    assert again == journey and version_hash(again) == version_hash(journey)


def test_rules_that_name_a_journey_step_are_checked() -> None:
    """`opened: {journey: welcome, step: helo}` would never match: every contact would count
    as "not opened" and get the reminder. Its own steps are checked always; another journey's
    when the project's journeys are known."""
    text = """
        name: welcome
        trigger: {type: api}
        steps:
          - {id: hello, type: email, template: welcome}
          - id: check
            type: branch
            branches:
              - when: {opened: {journey: welcome, step: helo}}
                next: done
              - when: {not: {clicked: {journey: winbak}}}
                next: done
              - when: {received: {journey: winback, step: nudge}}
                next: done
            otherwise: done
          - {id: done, type: exit}
    """
    assert errors_of(text, None) == [
        "j.yaml:9:9: steps[1].branches[0].when: journey 'welcome' has no step 'helo': this "
        "rule would never match (hint: did you mean 'hello'?)"
    ]
    refs = References(template_exists=lambda n, c: True, journeys={"winback": ["offer", "done"]})
    errors = errors_of(text, refs)
    assert len(errors) == 3
    assert "no journey named 'winbak': this rule would never match" in errors[1]
    assert "did you mean 'winback'?" in errors[1]
    assert "journey 'winback' has no step 'nudge'" in errors[2]
    assert "its steps are: offer, done" in errors[2]
