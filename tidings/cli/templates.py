"""``tidings templates``: check every template, preview one for a contact.

tidings templates check
tidings templates preview welcome --sample 2 --out preview/
tidings templates preview order_shipped --contact ada --out preview/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(help="Email (MJML + Jinja) and SMS templates.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


def _renderer(templates_dir: Path | None) -> Any:
    from tidings.templates.render import Renderer

    return Renderer(templates_dir)


@app.command("check")
def check(
    templates_dir: Path | None = typer.Option(
        None, "--dir", help="Templates folder (default: TIDINGS_TEMPLATES_DIR)."
    ),
    samples: Path | None = typer.Option(
        None, help="Sample contacts YAML (default: <dir>/samples.yaml)."
    ),
) -> None:
    """Render every template for every sample contact; report file:line of each problem."""
    from tidings.templates.check import check_templates, load_samples

    renderer = _renderer(templates_dir)
    report = check_templates(renderer, load_samples(samples or renderer.root / "samples.yaml"))
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    for problem in report.problems:
        console.print(str(problem))
    emails, sms = renderer.email_names(), renderer.sms_names()
    variants = sum(len(renderer.locales(n, "email")) for n in emails) + sum(
        len(renderer.locales(n, "sms")) for n in sms
    )
    summary = (
        f"{len(emails)} email and {len(sms)} SMS templates, {variants} locale variants, "
        f"{report.rendered} renders"
    )
    if report.problems:
        console.print(f"[red]{len(report.problems)} problem(s)[/] in {summary}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {summary}")


def _store_contact(ref: str) -> dict[str, Any]:
    from sqlalchemy import or_, select

    from tidings.crm.db import make_engine, session_scope
    from tidings.crm.models import Contact
    from tidings.errors import InputError
    from tidings.templates.render import contact_context

    engine = make_engine()
    with session_scope(engine) as session:
        condition = Contact.external_id == ref
        if ref.isdigit():
            condition = or_(condition, Contact.id == int(ref))
        contact = session.scalars(select(Contact).where(condition).limit(1)).first()
        if contact is None:
            raise InputError(
                f"no contact with id or external_id {ref!r}",
                location="--contact",
                hint="tidings contacts ... lists them; or use --sample N",
            )
        return contact_context(contact)


@app.command("preview")
def preview(
    name: str = typer.Argument(..., help="Template name: email/NAME.mjml or sms/NAME.sms.j2."),
    contact: str | None = typer.Option(None, help="Contact id or external_id in the store."),
    sample: int | None = typer.Option(None, help="Sample contact number (1-based)."),
    out: Path = typer.Option(Path("preview"), help="Folder for the .html/.txt/.sms.txt files."),
    variant: str | None = typer.Option(None, help="Subject variant of an A/B template."),
    locale: str | None = typer.Option(
        None, help="Render as if the contact's locale were this (e.g. de_AT, pl, pt-BR)."
    ),
    templates_dir: Path | None = typer.Option(None, "--dir", help="Templates folder."),
) -> None:
    """Write the HTML, text and SMS output of NAME for one contact."""
    from tidings.errors import InputError
    from tidings.templates.check import load_samples

    renderer = _renderer(templates_dir)
    samples = load_samples(renderer.root / "samples.yaml")
    if contact is not None:
        person = _store_contact(contact)
    else:
        number = sample or 1
        if not 1 <= number <= len(samples.contacts):
            raise InputError(
                f"--sample {number} is out of range", hint=f"1..{len(samples.contacts)}"
            )
        person = samples.contacts[number - 1]
    context = samples.context_for(name)
    out.mkdir(parents=True, exist_ok=True)
    found = False
    if renderer.email_path(name).is_file():
        found = True
        email = renderer.render_email(
            name,
            contact=person,
            message_id="preview",
            context=context,
            variant=variant,
            locale=locale,
        )
        (out / f"{name}.html").write_text(email.html, encoding="utf-8")
        (out / f"{name}.txt").write_text(email.text, encoding="utf-8")
        console.print(f"subject:   {email.subject}  (variant {email.variant})")
        console.print(f"locale:    {email.locale}")
        console.print(f"preheader: {email.preheader}")
        console.print(f"wrote {out / (name + '.html')} and {out / (name + '.txt')}")
    if renderer.sms_path(name).is_file():
        found = True
        sms = renderer.render_sms(
            name, contact=person, message_id="preview", context=context, locale=locale
        )
        (out / f"{name}.sms.txt").write_text(sms.body + "\n", encoding="utf-8")
        console.print(sms.body)
        console.print(
            f"SMS: {sms.encoding}, {sms.segments} segment(s), {sms.characters} characters, "
            f"{sms.units} {'septets' if sms.encoding == 'GSM-7' else 'UTF-16 units'}, "
            f"locale {sms.locale}"
        )
        for warning in sms.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"wrote {out / (name + '.sms.txt')}")
    if not found:
        raise InputError(
            f"no template named {name!r}",
            location=str(renderer.root),
            hint=f"email: {renderer.email_names()}; sms: {renderer.sms_names()}",
        )
