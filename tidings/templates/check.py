"""``tidings templates check``: render every template for every sample contact.

Each problem is ``file:line: message`` so an editor can jump to it; a template with a missing
variable fails here, never at send time for one contact out of thousands.

>>> report = check_templates(Renderer("templates"))       # doctest: +SKIP
>>> report.ok, report.problems[:1]                          # doctest: +SKIP
(True, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidings.errors import InputError
from tidings.templates.render import Renderer, TemplateRenderError


@dataclass(frozen=True, slots=True)
class Problem:
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Samples:
    contacts: list[dict[str, Any]]
    context: dict[str, Any]
    per_template: dict[str, dict[str, Any]]

    def context_for(self, template: str) -> dict[str, Any]:
        return {**self.context, **self.per_template.get(template, {})}


def load_samples(path: Path) -> Samples:
    """Sample contacts and context (``templates/samples.yaml``)."""
    if not path.is_file():
        raise InputError(
            "no sample contacts file",
            location=str(path),
            hint="create samples.yaml with a `contacts:` list (see docs/templates.md)",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise InputError(f"not valid YAML: {exc}", location=f"{path}:{line}") from exc
    contacts = data.get("contacts")
    if not isinstance(contacts, list) or not contacts:
        raise InputError(
            "`contacts` must be a non-empty list", location=f"{path}:1", hint="- {first_name: Ada}"
        )
    return Samples(
        [dict(c) for c in contacts],
        dict(data.get("context") or {}),
        {str(k): dict(v or {}) for k, v in (data.get("templates") or {}).items()},
    )


def _add(report: CheckReport, problem: Problem) -> None:
    """One line per place and message, naming the first sample contact that hit it."""
    key = problem.message.split(" (sample contact ")[0]
    if not any(
        p.location == problem.location and p.message.startswith(key) for p in report.problems
    ):
        report.problems.append(problem)


def check_templates(renderer: Renderer, samples: Samples | None = None) -> CheckReport:
    """Compile every template and render it for every sample contact (every subject variant)."""
    samples = samples or load_samples(renderer.root / "samples.yaml")
    report = CheckReport()
    if renderer.insecure_key:
        report.warnings.append("TIDINGS_SECRET_KEY is unset: links are signed with a dev key")
    for name in renderer.email_names():
        try:
            compiled = renderer.email(name, reload=True)
        except InputError as exc:
            _add(report, Problem(exc.location or name, exc.message))
            continue
        report.warnings.extend(compiled.warnings)
        for unknown in compiled.mjml_problems:
            _add(report, Problem(unknown.location, unknown.message))
        for variant in compiled.subjects:
            for index, contact in enumerate(samples.contacts):
                try:
                    renderer.render_email(
                        name,
                        contact=contact,
                        message_id=f"check-{index}",
                        context=samples.context_for(name),
                        variant=variant,
                    )
                    report.rendered += 1
                except TemplateRenderError as exc:
                    who = contact.get("external_id") or contact.get("id") or index
                    _add(report, Problem(exc.location, f"{exc.message} (sample contact {who})"))
    for name in renderer.sms_names():
        for index, contact in enumerate(samples.contacts):
            try:
                sms = renderer.render_sms(
                    name,
                    contact=contact,
                    message_id=f"check-{index}",
                    context=samples.context_for(name),
                )
                report.rendered += 1
                who = contact.get("external_id") or contact.get("id") or index
                report.warnings.extend(
                    f"{renderer.sms_path(name)}: sample contact {who}: {w}" for w in sms.warnings
                )
            except InputError as exc:
                _add(report, Problem(exc.location or name, exc.message))
                break
            except TemplateRenderError as exc:
                who = contact.get("external_id") or contact.get("id") or index
                _add(report, Problem(exc.location, f"{exc.message} (sample contact {who})"))
    return report
