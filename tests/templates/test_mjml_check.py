"""``tidings templates check`` rejects unknown MJML tags and attributes with file:line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.templates.conftest import SHIPPED, mjml, write_email
from tidings.cli import app
from tidings.errors import InputError
from tidings.templates.mjml_schema import check_mjml
from tidings.templates.render import Renderer

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(SHIPPED / "samples.yaml", tmp_path / "samples.yaml")
    write_email(tmp_path, "fine", mjml('<mj-text color="#333" css-class="x">Hi</mj-text>'))
    return tmp_path


def check(folder: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["templates", "check", "--dir", str(folder)])
    return result.exit_code, result.output


def test_unknown_tag_with_file_line_and_suggestion(folder: Path) -> None:
    body = (
        "<mjml><mj-body>\n"
        "<mj-sectoin><mj-column><mj-text>Hi</mj-text></mj-column></mj-sectoin>\n"
        "</mj-body></mjml>\n"
    )
    write_email(folder, "typo", body)  # front matter: lines 1-3; the body starts on line 4

    code, out = check(folder)

    assert code == 1, out
    assert (
        f"{folder}/email/typo.mjml:5: unknown MJML tag <mj-sectoin>: did you mean <mj-section>?"
        in out
    )
    assert "fine.mjml" not in out
    # and it never reaches the HTML of a send
    with pytest.raises(InputError, match="unknown MJML tag <mj-sectoin>"):
        Renderer(folder, secret_key="k").render_email("typo", contact={}, message_id="m")


def test_unknown_attribute_with_file_line_and_suggestion(folder: Path) -> None:
    write_email(folder, "attr", mjml('<mj-text>ok</mj-text>\n<mj-text colr="#f00">Hi</mj-text>'))

    code, out = check(folder)

    assert code == 1, out
    assert (
        f"{folder}/email/attr.mjml:6: <mj-text> has no attribute 'colr': did you mean 'color'?"
        in out
    )
    assert "1 problem(s)" in out


def test_partials_are_checked_in_their_own_file(folder: Path) -> None:
    (folder / "partials").mkdir()
    (folder / "partials" / "cta.mjml").write_text(
        '<mj-section>\n<mj-column>\n<mj-button hreff="https://x.example">Go</mj-button>\n'
        "</mj-column>\n</mj-section>\n"
    )
    write_email(
        folder,
        "uses",
        '<mjml><mj-body>\n<mj-include path="../partials/cta.mjml" />\n</mj-body></mjml>\n',
    )

    code, out = check(folder)

    assert code == 1, out
    assert f"{folder}/partials/cta.mjml:3: <mj-button> has no attribute 'hreff'" in out
    assert "did you mean 'href'?" in out


def test_what_mjml_allows_passes() -> None:
    source = (
        '<mjml lang="en">\n<mj-head>\n<mj-attributes>\n<mj-all font-family="Arial" />\n'
        '<mj-class name="blue" color="blue" anything-goes="1" />\n'
        '<mj-text line-height="1.5" />\n</mj-attributes>\n'
        '<mj-style inline="inline">.a > .b { color: red }</mj-style>\n'
        "<mj-title>T</mj-title><mj-preview>P</mj-preview>\n"
        '<mj-font name="Lato" href="https://fonts.example/lato.css" />\n'
        '<mj-breakpoint width="480px" />\n'
        "</mj-head>\n"
        '<mj-body width="600px">\n<mj-wrapper padding="0">\n'
        '<mj-section full-width="full-width" background-url="https://x.example/bg.png">\n'
        '<mj-column width="50%" inner-background-color="#fff">\n'
        '<mj-text mj-class="blue" href="{{ url }}"><p data-x="1" onclick="">{{ a }}</p></mj-text>\n'
        '<mj-image src="https://x.example/a.png" alt="" href="https://x.example" />\n'
        '<mj-button href="https://x.example" {% if x %}rel="noopener"{% endif %}>Go</mj-button>\n'
        '<mj-divider border-color="#eee" /><mj-spacer height="20px" />\n'
        '<mj-social mode="horizontal"><mj-social-element name="facebook" href="#">F'
        "</mj-social-element></mj-social>\n"
        "<mj-raw><div foo=bar>{% for i in x %}{% endfor %}</div></mj-raw>\n"
        '<mj-table cellpadding="4"><tr><td weird="1">x</td></tr></mj-table>\n'
        "</mj-column>\n</mj-section>\n</mj-wrapper>\n</mj-body>\n</mjml>\n"
    )
    problems = check_mjml(source, path="ok.mjml")
    # the only problem: mj-text takes no href (a link goes in an <a> inside it)
    assert [str(p)[:46] for p in problems] == ["ok.mjml:17: <mj-text> has no attribute 'href':"]
    assert "<mj-text> takes align, color," in problems[0].message


def test_defaults_in_mj_attributes_are_checked_too() -> None:
    source = '<mjml><mj-head><mj-attributes>\n<mj-button colour="#fff" />\n</mj-attributes>'
    [problem] = check_mjml(source + "</mj-head></mjml>", path="head.mjml", first_line=10)
    assert str(problem) == (
        "head.mjml:11: <mj-button> has no attribute 'colour': did you mean 'color'?"
    )
