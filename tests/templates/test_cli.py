"""``tidings templates check`` and ``preview`` through the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.templates.conftest import SHIPPED, mjml, write_email
from tidings.cli import app
from tidings.config import get_settings
from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.crm.models import Contact

runner = CliRunner()


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    shutil.copy(SHIPPED / "samples.yaml", tmp_path / "samples.yaml")
    write_email(tmp_path, "fine", mjml("<mj-text>Hi {{ contact | first_name }}</mj-text>"))
    write_email(
        tmp_path,
        "missing",
        mjml("<mj-text>ok</mj-text>\n<mj-text>{{ contact.attributes.vip_tier }}</mj-text>"),
    )
    write_email(tmp_path, "syntax", mjml("<mj-text>{% if x %}never closed</mj-text>"))
    write_email(tmp_path, "badsubject", mjml("<mj-text>x</mj-text>"), "subject: 'Hi {{ coupon }}'")
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "promo.sms.j2").write_text("Hi\n{{ contact.first_name }} {{ deal.code }}\n")
    return tmp_path


def test_check_passes_on_shipped_templates() -> None:
    result = runner.invoke(app, ["templates", "check", "--dir", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "ok: 4 email and 1 SMS templates" in result.output  # with confirm_subscription


def test_check_reports_every_problem_with_file_and_line(broken_dir: Path) -> None:
    result = runner.invoke(app, ["templates", "check", "--dir", str(broken_dir)])
    assert result.exit_code == 1
    out = result.output
    assert (
        f"{broken_dir}/email/missing.mjml:6: html in {{{{ contact.attributes.vip_tier }}}}" in out
    )
    assert "has no attribute 'vip_tier'" in out
    assert f"{broken_dir}/email/syntax.mjml:5: Jinja syntax error in the body" in out
    assert (
        f"{broken_dir}/email/badsubject.mjml:2: subject: UndefinedError: 'coupon' is undefined"
        in out
    )
    assert f"{broken_dir}/sms/promo.sms.j2:2: UndefinedError: 'deal' is undefined" in out
    assert "fine.mjml" not in out
    assert "4 problem(s)" in out


def test_bare_jinja_loop_between_components_survives_compilation(tmp_path: Path) -> None:
    """{% %} tags travel through MRML and the CSS inliner as comments, so no <mj-raw> needed."""
    from tidings.templates.render import Renderer

    body = (
        "<mjml><mj-body>\n{% for i in [1, 2, 3] %}\n"
        "<mj-section><mj-column><mj-text>ROW{{ i }}</mj-text></mj-column></mj-section>\n"
        "{% endfor %}\n</mj-body></mjml>"
    )
    write_email(tmp_path, "loop", body)
    email = Renderer(tmp_path, secret_key="k").render_email("loop", contact={}, message_id="m")
    assert email.html.count("ROW") == 3 and "ROW3" in email.html
    assert [line for line in email.text.split() if line] == ["ROW1", "ROW2", "ROW3"]


def test_preview_sample_writes_html_text_and_sms(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("abandoned_cart", "order_shipped"):
        result = runner.invoke(
            app,
            [
                "templates",
                "preview",
                name,
                "--sample",
                "2",
                "--out",
                str(out),
                "--dir",
                str(SHIPPED),
            ],
        )
        assert result.exit_code == 0, result.output
    assert "1.234,56" in (out / "abandoned_cart.html").read_text()
    assert "Jürgen" in (out / "abandoned_cart.txt").read_text()
    # Jürgen's locale is de_DE: the German variant of the SMS (docs/templates.md, Languages)
    assert (out / "order_shipped.sms.txt").read_text().startswith("Jürgen, Ihre Tidings-Shop")
    assert "SMS: GSM-7, 1 segment(s)" in result.output


def test_preview_reads_contact_from_store(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    try:
        engine = make_engine(sqlite_url)
        upgrade(engine)
        with session_scope(engine) as session:
            session.add(
                Contact(
                    external_id="zoe-1",
                    first_name="Zoë",
                    locale="fr_FR",
                    email="zoe@example.fr",
                    phone="+33612345678",
                    attributes={},
                )
            )
        result = runner.invoke(
            app,
            [
                "templates",
                "preview",
                "order_shipped",
                "--contact",
                "zoe-1",
                "--out",
                str(tmp_path),
                "--dir",
                str(SHIPPED),
            ],
        )
        assert result.exit_code == 0, result.output
        body = (tmp_path / "order_shipped.sms.txt").read_text()
        assert body.startswith("Zoë, your")
        assert "UCS-2" in result.output  # ë is not in the GSM alphabet
        missing = runner.invoke(
            app,
            [
                "templates",
                "preview",
                "welcome",
                "--contact",
                "nobody",
                "--out",
                str(tmp_path),
                "--dir",
                str(SHIPPED),
            ],
        )
        assert missing.exit_code != 0
    finally:
        get_settings.cache_clear()
