"""Locale variants: the fallback chain, ``lang``, partials, and what ``templates check`` reports."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.templates.conftest import SECRET, SHIPPED, mjml, write_email
from tidings.cli import app
from tidings.config import Settings
from tidings.templates.check import check_templates
from tidings.templates.render import Renderer

runner = CliRunner()


def lang(html: str) -> str:
    found = re.search(r"<html[^>]*\slang=\"([^\"]+)\"", html)
    assert found, html[:200]
    return found.group(1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the shipped templates to add files to."""
    root = tmp_path / "templates"
    shutil.copytree(SHIPPED, root)
    return root


def render(renderer: Renderer, locale: str | None, name: str = "welcome") -> tuple[str, str, str]:
    email = renderer.render_email(
        name, contact={"first_name": "Kim", "locale": locale}, message_id="m1", variant="A"
    )
    return email.subject, lang(email.html), email.locale


def test_fallback_chain(renderer: Renderer) -> None:
    assert render(renderer, "pl_PL") == ("Witamy w Tidings Shop, Kim!", "pl", "pl")
    assert render(renderer, "pl") == ("Witamy w Tidings Shop, Kim!", "pl", "pl")
    assert render(renderer, "de_AT") == ("Willkommen bei Tidings Shop, Kim!", "de", "de")
    assert render(renderer, "de-CH") == ("Willkommen bei Tidings Shop, Kim!", "de", "de")
    assert render(renderer, "pt_BR") == ("Welcome to Tidings Shop, Kim!", "en", "en")
    assert render(renderer, None) == ("Welcome to Tidings Shop, Kim!", "en", "en")
    assert render(renderer, "not a locale") == ("Welcome to Tidings Shop, Kim!", "en", "en")
    # a template without variants is the default for everyone, in the default language
    assert lang(renderer.email("winback").html) == "en"


def test_the_most_specific_variant_wins_and_the_default_locale_is_a_setting(
    project: Path,
) -> None:
    source = (project / "email" / "welcome.mjml").read_text(encoding="utf-8")
    (project / "email" / "welcome.pt.mjml").write_text(
        source.replace("Welcome to Tidings Shop", "Bem-vindo à Tidings Shop"), encoding="utf-8"
    )
    (project / "email" / "welcome.pt-BR.mjml").write_text(  # BCP 47 in the file name
        source.replace("Welcome to Tidings Shop", "Boas-vindas à Tidings Shop"), encoding="utf-8"
    )
    renderer = Renderer(project, Settings(default_locale="en-GB"), secret_key=SECRET)
    assert renderer.locales("welcome").keys() == {"de", "pl", "pt", "pt_BR"}
    assert render(renderer, "pt_BR") == ("Boas-vindas à Tidings Shop, Kim!", "pt-BR", "pt_BR")
    assert render(renderer, "pt_PT") == ("Bem-vindo à Tidings Shop, Kim!", "pt", "pt")
    assert render(renderer, "es_ES") == ("Welcome to Tidings Shop, Kim!", "en-GB", "en_GB")
    with pytest.raises(ValueError, match="unknown locale 'english'"):
        Settings(default_locale="english")


def test_lang_set_in_the_template_wins_and_text_sidecars_follow(tmp_path: Path) -> None:
    body = mjml("<mj-text>Hello</mj-text>")
    write_email(tmp_path, "note", body.replace("<mjml>", '<mjml lang="fr">'))
    write_email(tmp_path, "plain", body)
    write_email(tmp_path, "plain.pl", body)  # the same source, for Polish contacts
    (tmp_path / "email" / "plain.txt.j2").write_text("Hello in text\n")
    (tmp_path / "email" / "plain.pl.txt.j2").write_text("Cześć\n")
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    note = renderer.render_email("note", contact={"locale": "pl"}, message_id=1)
    english = renderer.render_email("plain", contact={"locale": "en"}, message_id=1)
    polish = renderer.render_email("plain", contact={"locale": "pl_PL"}, message_id=1)
    assert lang(note.html) == "fr"
    assert (lang(english.html), english.text) == ("en", "Hello in text\n")
    assert (lang(polish.html), polish.text) == ("pl", "Cześć\n")
    assert english.version != polish.version  # a version per language, cached apart


def test_check_reports_what_a_variant_lacks(project: Path) -> None:
    email = project / "email"
    source = (email / "welcome.pl.mjml").read_text(encoding="utf-8")
    # the Polish variant loses its preheader and its subject B
    broken = re.sub(r"\npreheader:.*", "", source)
    broken = re.sub(r'\n  B: ".*"', "", broken)
    (email / "welcome.pl.mjml").write_text(broken, encoding="utf-8")
    shutil.copy(email / "winback.mjml", email / "winback.xx.mjml")
    shutil.copy(email / "winback.mjml", email / "promo.de.mjml")
    (project / "sms" / "order_shipped.fr.sms.j2").write_text("{{ order.nope.deeper }}\n")

    report = check_templates(Renderer(project, Settings(), secret_key=SECRET))
    problems = [str(p) for p in report.problems]
    subject_line = broken.splitlines().index("subject:") + 1
    assert (
        f"{email}/welcome.pl.mjml:1: locale variant 'pl' lacks the front matter key "
        f"'preheader' that {email}/welcome.mjml:6 has"
    ) in problems
    assert (
        f"{email}/welcome.pl.mjml:{subject_line}: locale variant 'pl' lacks the subject variant "
        f"'B' that {email}/welcome.mjml:3 has"
    ) in problems
    assert any(
        p.startswith(f"{email}/winback.xx.mjml:1: unknown locale 'xx' in the file name")
        for p in problems
    )
    assert any(
        p.startswith(f"{email}/promo.de.mjml:1: locale variant 'de' of 'promo', which has no")
        for p in problems
    )
    assert any(
        p.startswith(f"{project}/sms/order_shipped.fr.sms.j2:1: UndefinedError") for p in problems
    )
    assert not any("welcome.de.mjml" in p for p in problems)  # the German one is complete
    assert len(problems) == 5, problems

    result = runner.invoke(app, ["templates", "check", "--dir", str(project)])
    assert result.exit_code == 1
    assert "lacks the front matter key 'preheader'" in result.output


def test_check_passes_on_the_shipped_variants_and_renders_each(renderer: Renderer) -> None:
    report = check_templates(renderer)
    assert report.ok, report.problems
    result = runner.invoke(app, ["templates", "check", "--dir", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "4 email and 1 SMS templates, 4 locale variants" in result.output


def test_preview_in_another_locale(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["templates", "preview", "welcome", "--dir", str(SHIPPED), "--out", str(tmp_path),
         "--locale", "pl-PL"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "locale:    pl" in result.output
    assert 'lang="pl"' in (tmp_path / "welcome.html").read_text(encoding="utf-8")
