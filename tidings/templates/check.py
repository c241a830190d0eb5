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
from tidings.templates.compiler import CompiledEmail, split_front_matter
from tidings.templates.locales import split_stem
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
    """Compile every template and locale variant and render each for every sample contact
    (every subject variant); report variants that lack a key the default has, and file names
    whose locale is unknown."""
    samples = samples or load_samples(renderer.root / "samples.yaml")
    report = CheckReport()
    if renderer.insecure_key:
        report.warnings.append("TIDINGS_SECRET_KEY is unset: links are signed with a dev key")
    _check_file_names(renderer, report)
    for name in renderer.email_names():
        default = _check_email(renderer, report, samples, name, None)
        for locale in renderer.locales(name, "email"):
            variant = _check_email(renderer, report, samples, name, locale)
            if default is not None and variant is not None:
                _compare(renderer, report, name, locale, default, variant)
    for name in renderer.sms_names():
        variants: list[str | None] = [None, *renderer.locales(name, "sms")]
        for sms_locale in variants:
            _check_sms(renderer, report, samples, name, sms_locale)
    return report


def _who(contact: dict[str, Any], index: int) -> Any:
    return contact.get("external_id") or contact.get("id") or index


def _check_email(
    renderer: Renderer, report: CheckReport, samples: Samples, name: str, locale: str | None
) -> CompiledEmail | None:
    """Compile one file of ``name`` (the default, or a locale variant) and render it for every
    sample contact and subject variant, as if each contact had that locale."""
    try:
        compiled = renderer.email(name, reload=True, locale=locale)
    except InputError as exc:
        _add(report, Problem(exc.location or name, exc.message))
        return None
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
                    locale=locale or renderer.default_locale,
                )
                report.rendered += 1
            except TemplateRenderError as exc:
                who = _who(contact, index)
                _add(report, Problem(exc.location, f"{exc.message} (sample contact {who})"))
            except InputError as exc:
                _add(report, Problem(exc.location or name, exc.message))
                break
    return compiled


def _front_keys(path: str) -> dict[str, int]:
    front, lines, _, _ = split_front_matter(Path(path).read_text(encoding="utf-8"), path)
    return {str(key): lines.get(str(key), 1) for key in front}


def _compare(
    renderer: Renderer,
    report: CheckReport,
    name: str,
    locale: str,
    default: CompiledEmail,
    variant: CompiledEmail,
) -> None:
    """What the default file has and the locale variant lacks: front matter keys, subject
    variants (an A/B test would send variant A's subject to group B), the text part."""
    theirs, mine = _front_keys(default.path), _front_keys(variant.path)
    for key, line in theirs.items():
        if key not in mine:
            _add(
                report,
                Problem(
                    f"{variant.path}:1",
                    f"locale variant {locale!r} lacks the front matter key {key!r} that "
                    f"{default.path}:{line} has",
                ),
            )
    if "subject" in mine:
        for missing in [v for v in default.subjects if v not in variant.subjects]:
            _add(
                report,
                Problem(
                    f"{variant.path}:{mine['subject']}",
                    f"locale variant {locale!r} lacks the subject variant {missing!r} that "
                    f"{default.path}:{theirs.get('subject', 1)} has",
                ),
            )
    if default.text_from.endswith(".txt.j2") and not variant.text_from.endswith(".txt.j2"):
        report.warnings.append(
            f"{variant.path}: locale variant {locale!r} has no {name}.{locale}.txt.j2 (the "
            f"default has {default.text_from}); its text part is derived from its HTML"
        )


def _check_sms(
    renderer: Renderer, report: CheckReport, samples: Samples, name: str, locale: str | None
) -> None:
    for index, contact in enumerate(samples.contacts):
        try:
            sms = renderer.render_sms(
                name,
                contact=contact,
                message_id=f"check-{index}",
                context=samples.context_for(name),
                locale=locale or renderer.default_locale,
            )
            report.rendered += 1
            report.warnings.extend(
                f"{renderer.sms_path(name, locale)}: sample contact {_who(contact, index)}: {w}"
                for w in sms.warnings
            )
        except InputError as exc:
            _add(report, Problem(exc.location or name, exc.message))
            break
        except TemplateRenderError as exc:
            who = _who(contact, index)
            _add(report, Problem(exc.location, f"{exc.message} (sample contact {who})"))


FILE_KINDS = (("email", ".txt.j2"), ("email", ".mjml"), ("sms", ".sms.j2"), ("partials", ".mjml"))


def _check_file_names(renderer: Renderer, report: CheckReport) -> None:
    """``welcome.xx.mjml``: an unknown locale; ``promo.de.mjml`` without ``promo.mjml``: a
    variant of nothing (no contact would ever get it)."""
    for folder, ext in FILE_KINDS:
        for path in sorted((renderer.root / folder).glob(f"*{ext}")):
            base, locale, bad = split_stem(path.name.removesuffix(ext))
            if bad is not None:
                _add(
                    report,
                    Problem(
                        f"{path}:1",
                        f"unknown locale {bad!r} in the file name: a dot separates the "
                        f"template name from a locale such as de, pl or pt_BR "
                        f"({base}.de{ext})",
                    ),
                )
            elif ext == ".txt.j2":  # a text part belongs to its own NAME[.locale].mjml
                continue
            elif locale is not None and not (path.parent / f"{base}{ext}").is_file():
                _add(
                    report,
                    Problem(
                        f"{path}:1",
                        f"locale variant {locale!r} of {base!r}, which has no default file "
                        f"{base}{ext}: add it (contacts of other locales get the default)",
                    ),
                )
