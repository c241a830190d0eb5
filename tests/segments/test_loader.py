"""Bad segment files: every error names file:line:col, the key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.errors import InputError
from tidings.segments.core import All, Column, Compare, EventCount, Not
from tidings.segments.loader import SegmentErrors, load_catalog, load_file, load_text
from tidings.segments.rules import parse_duration


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def test_unknown_operator_names_line_key_and_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a",
        """
name: a
rule:
  all:
    - attribute: plan
      eq: pro
    - attribute: age
      gtee: 30
""",
    )
    with pytest.raises(SegmentErrors) as info:
        load_file(path)
    (error,) = info.value.errors
    assert error.location == f"{path}:7:7"
    assert "rule.all[1].gtee" in error.message and "unknown key 'gtee'" in error.message
    assert error.hint == "did you mean 'gte'?"


def test_bad_window_is_an_error_with_a_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a",
        """
name: a
rule:
  event: product.viewed
  within: 3 dayz
""",
    )
    with pytest.raises(SegmentErrors) as info:
        load_file(path)
    (error,) = info.value.errors
    assert error.location == f"{path}:4:3"
    assert "rule.within" in error.message and "'3 dayz'" in error.message
    assert error.hint == "did you mean '3 days'?"


def test_all_errors_of_a_file_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a",
        """
name: a
rule:
  any:
    - atribute: plan
    - event: x
      within: 2 wekks
    - orders: {total_spend: {gte: 10}, lastorder: {within: 9 days}}
""",
    )
    with pytest.raises(SegmentErrors) as info:
        load_file(path)
    errors = info.value.errors
    assert [e.location for e in errors] == [f"{path}:4:7", f"{path}:6:7", f"{path}:7:40"]
    assert [e.hint for e in errors] == [
        "did you mean 'attribute'?",
        "did you mean '2 weeks'?",
        "did you mean 'last_order'?",
    ]
    assert str(info.value).count("\n") == 2  # one line per error


def test_unknown_segment_reference(tmp_path: Path) -> None:
    write(tmp_path, "vip", "name: vip\nrule: {attribute: plan, eq: pro}\n")
    path = write(
        tmp_path,
        "b",
        """
name: b
rule:
  all:
    - segment: vipp
""",
    )
    with pytest.raises(SegmentErrors) as info:
        load_catalog(tmp_path)
    (error,) = info.value.errors
    assert error.location == f"{path}:4:7"
    assert "unknown segment 'vipp'" in error.message
    assert error.hint == "did you mean 'vip'?"


def test_reference_cycle_is_named(tmp_path: Path) -> None:
    write(tmp_path, "a", "name: a\nrule:\n  all:\n    - segment: b\n")
    b = write(tmp_path, "b", "name: b\nrule:\n  not:\n    segment: a\n")
    write(tmp_path, "c", "name: c\nrule: {segment: c}\n")
    with pytest.raises(SegmentErrors) as info:
        load_catalog(tmp_path)
    messages = sorted((e.message, e.location) for e in info.value.errors)
    assert messages == [
        ("segment: reference cycle a -> b -> a", f"{b}:4:5"),
        ("segment: reference cycle c -> c", f"{tmp_path / 'c.yaml'}:2:8"),
    ]


def test_materialised_reference_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a", "name: a\nrule: {segment: {name: a, materialised: true}}\n")
    assert load_catalog(tmp_path).core("a").__class__.__name__ == "Member"


def test_not_a_rule_and_bad_yaml() -> None:
    with pytest.raises(SegmentErrors) as info:
        load_text("name: a\nrule: {plan: pro}\n", source="x.yaml")
    assert info.value.errors[0].location == "x.yaml:2:7"
    assert "not a rule" in info.value.errors[0].message
    with pytest.raises(InputError) as bad:
        load_text("name: a\nrule: [\n", source="y.yaml")
    assert bad.value.location is not None and bad.value.location.startswith("y.yaml:")


def test_durations() -> None:
    assert parse_duration("30 days") == 30 * 86400
    assert parse_duration("12 hours") == 12 * 3600
    assert parse_duration("2 weeks") == parse_duration("14 d")
    for bad in ("3 dayz", "days", "30", "-1 days"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_shorthand_rewrites_into_the_core() -> None:
    seg, _ = load_text("""
name: a
rule:
  all:
    - attribute: email
      exists: false
    - event: x
      count: {ne: 2}
""")
    from tidings.segments.core import to_core

    core = to_core(seg.rule)
    assert isinstance(core, All)
    assert core.children[0] == Not(Compare(Column("email"), "exists", None))
    assert core.children[1] == Not(EventCount("x", (), None, "eq", 2))


def test_a_column_is_compared_with_its_own_kind() -> None:
    with pytest.raises(SegmentErrors) as info:
        load_text(
            "name: a\nrule:\n  any:\n    - {attribute: created_at, gte: pro}\n"
            "    - score: {churn_risk: {gte: high}}\n",
            source="k.yaml",
        )
    first, second = info.value.errors
    assert first.location == "k.yaml:4:8"
    assert "created_at holds a time" in first.message and "30 days ago" in first.message
    assert second.location == "k.yaml:5:7" and "churn_risk holds a number" in second.message


@pytest.mark.parametrize(
    ("count", "line", "key", "shown"),
    [
        ("{gte: three}", "4:13", "rule.orders.count.gte", "not 'three'"),
        ('"3"', "4:5", "rule.orders.count", "not '3'"),
        ("2.5", "4:5", "rule.orders.count", "not 2.5"),
        ("{lt: -1}", "4:13", "rule.orders.count.lt", "negative"),
    ],
)
def test_a_wrong_count_names_place_and_fix(
    tmp_path: Path, count: str, line: str, key: str, shown: str
) -> None:
    path = write(tmp_path, "a", f"\nname: a\nrule:\n  orders:\n    count: {count}\n")
    with pytest.raises(SegmentErrors) as info:
        load_file(path)
    (error,) = info.value.errors
    assert error.location == f"{path}:{line}", error
    assert error.message.startswith(f"{key}: a count"), error.message
    assert shown in error.message and "Input should" not in error.message
    assert error.hint and "count: {gte: 3}" in error.hint


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{event: '*'}", "matches every event"),
        ("{has_been: {attribute: email, exists: true, for: 7 days}}", "only keys of attributes"),
        ("{has_been: {attribute: plan, eq: pro}}", "'for' is required"),
        ("{has_been: {attribute: plan, within: 7 days, for: 7 days}}", "within/older_than"),
        ("{split: {weights: {a: 50, b: 50}, part: c}}", "part 'c' is not one of a, b"),
        ("{split: {weights: {a: 0, b: 50}, part: b}}", "weights must be positive: a"),
        ("{opened: {template: ''}}", "at least 1 character"),
    ],
)
def test_new_rules_refuse_what_cannot_be_meant(tmp_path: Path, rule: str, message: str) -> None:
    with pytest.raises(SegmentErrors) as info:
        load_text(f"name: a\nrule: {rule}\n", source="s.yaml")
    assert message in str(info.value), str(info.value)


def test_count_given_as_a_float_number_is_a_count() -> None:
    seg, _ = load_text("name: a\nrule: {event: x, count: 2.0}\n")
    assert seg.rule.count is not None and seg.rule.count.gte == 2  # type: ignore[union-attr]
