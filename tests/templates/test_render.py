"""Rendering: escaping, sandbox, compile cache, subjects, locale filters, text part."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.templates.conftest import SECRET, mjml, write_email
from tidings.config import Settings
from tidings.templates.render import Renderer, TemplateRenderError

EVIL = "<script>alert(1)</script>"


def test_script_in_name_is_escaped_in_html_plain_in_text_and_sms(renderer: Renderer) -> None:
    contact = {"first_name": EVIL, "locale": "en_US"}
    email = renderer.render_email("welcome", contact=contact, message_id="m1")
    assert EVIL not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert EVIL in email.text  # the text part is not HTML: no entities
    assert EVIL in email.subject
    order = {"number": "1", "tracking_url": "https://t.example/1"}
    sms = renderer.render_sms("order_shipped", contact=contact, context={"order": order})
    assert sms.body.startswith(EVIL)


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "cycler.__init__.__globals__",
        "contact.__class__.__base__.__subclasses__()",
        "range.__self__",
        "lipsum.__globals__['os']",
    ],
)
def test_sandbox_blocks_python_internals(tmp_path: Path, expression: str) -> None:
    write_email(tmp_path, "evil", mjml(f"<mj-text>{{{{ {expression} }}}}</mj-text>"))
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    with pytest.raises(TemplateRenderError) as info:
        renderer.render_email("evil", contact={}, message_id="m")
    assert "SecurityError" in str(info.value) or "UndefinedError" in str(info.value)
    assert info.value.location.endswith("evil.mjml:5")  # front matter is lines 1-3, <mjml> line 4


def test_mjml_compiled_once_for_many_renders(
    renderer: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mjml

    calls = 0
    real = mjml.mjml2html

    def counting(*args: object, **kwargs: object) -> str:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mjml, "mjml2html", counting)
    for i in range(1000):
        renderer.render_email("welcome", contact={"first_name": f"C{i}"}, message_id=i)
    assert calls == 1
    assert renderer.compile_count == 1
    # a new Renderer on the same content reuses nothing but compiles the same version
    again = Renderer(renderer.root, renderer.settings, secret_key=SECRET)
    assert again.email("welcome").version == renderer.email("welcome").version


def test_changed_template_gets_a_new_version(tmp_path: Path) -> None:
    path = write_email(tmp_path, "t", mjml("<mj-text>one</mj-text>"))
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    first = renderer.email("t").version
    path.write_text(path.read_text().replace("one", "two"))
    assert renderer.email("t").version == first  # cached by name until reloaded
    assert renderer.email("t", reload=True).version != first
    assert "two" in renderer.render_email("t", contact={}, message_id="m").html
    assert renderer.compile_count == 2


def test_subject_crlf_stripped_and_ab_variants(tmp_path: Path) -> None:
    front = "subject:\n  A: 'Hi {{ contact.first_name }}'\n  B: 'Hey {{ contact.first_name }}'"
    write_email(tmp_path, "ab", mjml("<mj-text>x</mj-text>"), front)
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    contact = {"first_name": "Ada\r\nBcc: victim@example.com\n"}
    a = renderer.render_email("ab", contact=contact, message_id="m")
    b = renderer.render_email("ab", contact=contact, message_id="m", variant="B")
    assert (a.subject, a.variant) == ("Hi Ada Bcc: victim@example.com", "A")
    assert b.subject == "Hey Ada Bcc: victim@example.com"
    assert "\n" not in a.subject and "\r" not in a.subject


def test_money_and_dates_in_contact_locale_and_timezone(tmp_path: Path) -> None:
    body = mjml(
        "<mj-text>T={{ total | money('EUR') }}|D={{ at | date('short') }}|"
        "H={{ at | datetime('short') }}|N={{ contact | first_name('friend') }}|"
        "C={{ contact.attributes.city | default('your city') }}</mj-text>"
    )
    write_email(tmp_path, "loc", body)
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    at = datetime(2026, 3, 5, 23, 30, tzinfo=UTC)
    context = {"total": Decimal("1234.56"), "at": at}
    berlin = {"first_name": "Jürgen", "locale": "de_DE", "timezone": "Europe/Berlin"}
    html = renderer.render_email("loc", contact=berlin, message_id="m", context=context).html
    assert "T=1.234,56\xa0€|D=06.03.26|H=06.03.26, 00:30|N=Jürgen|C=your city" in html
    us = {
        "first_name": "  ",
        "locale": "en-US",
        "timezone": "America/New_York",
        "attributes": {"city": None},
    }
    html = renderer.render_email("loc", contact=us, message_id="m", context=context).html
    assert "T=€1,234.56|D=3/5/26|H=3/5/26, 6:30\u202fPM|N=friend|C=your city" in html
    unknown = {"locale": "xx_YY", "timezone": "Mars/Base"}  # falls back to en_US and UTC
    html = renderer.render_email("loc", contact=unknown, message_id="m", context=context).html
    assert "D=3/5/26|H=3/5/26, 11:30\u202fPM" in html


def test_text_part_derived_at_compile_time(renderer: Renderer) -> None:
    compiled = renderer.email("abandoned_cart")
    assert compiled.text_from == "derived"
    assert "{% for item in cart.lines %}" in compiled.text
    assert "<" not in compiled.text.replace("<!--", "")  # no markup left
    cart = {
        "currency": "EUR",
        "total": 10,
        "url": "https://shop.example.com/cart",
        "lines": [
            {
                "name": "Sock",
                "quantity": 2,
                "price": 5,
                "url": "https://s.example/p",
                "image_url": "https://s.example/i.jpg",
            }
        ],
    }
    email = renderer.render_email(
        "abandoned_cart", contact={"locale": "de_DE"}, message_id="m", context={"cart": cart}
    )
    assert "2 \u00d7 5,00\xa0€" in email.text and "Total: 10,00\xa0€" in email.text
    assert email.preheader == "Your cart is saved: 10,00 € waiting for you."


def test_missing_variable_raises_with_source_line(tmp_path: Path) -> None:
    write_email(tmp_path, "t", mjml("<mj-text>a</mj-text>\n<mj-text>{{ order.number }}</mj-text>"))
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    with pytest.raises(TemplateRenderError) as info:
        renderer.render_email("t", contact={}, message_id="m")
    assert info.value.location == f"{tmp_path}/email/t.mjml:6"
    assert "'order' is undefined" in str(info.value)


def test_text_part_plays_back_the_html_values(tmp_path: Path) -> None:
    """The derived text shows what the HTML pass computed: each expression runs once."""
    body = mjml(
        "<mj-text>Hi {{ contact.first_name }}, {{ tick() }}</mj-text>\n"
        "<mj-raw>{% for item in items %}</mj-raw>\n"
        '<mj-text><a href="https://s.example/{{ item }}">{{ item | upper }} {{ tick() }}</a>'
        "</mj-text>\n<mj-raw>{% endfor %}</mj-raw>"
    )
    write_email(tmp_path, "t", body)
    renderer = Renderer(tmp_path, Settings(public_url="https://t.example"), secret_key=SECRET)
    calls: list[int] = []

    def tick() -> int:
        calls.append(1)
        return len(calls)

    email = renderer.render_email(
        "t", contact={"first_name": "Ada"}, message_id="m", context={"tick": tick, "items": "ab"}
    )
    assert len(calls) == 3  # once per output in the HTML, none more for the text
    assert "Hi Ada, 1" in email.text
    assert (
        "A 2 (https://t.example/t/c/" in email.text and "B 3 (https://t.example/t/c/" in email.text
    )
    assert renderer.email("t").replay_text is not None


def _full_text(renderer: Renderer, name: str, **kwargs: object) -> str:
    """The text part rendered by the full text template (no playback)."""
    entry = renderer._email(name)
    replay, entry.replay = entry.replay, None
    try:
        return renderer.render_email(name, **kwargs).text  # type: ignore[arg-type]
    finally:
        entry.replay = replay


@pytest.mark.parametrize("name", ["welcome", "abandoned_cart"])
def test_played_back_text_equals_the_full_text(renderer: Renderer, name: str) -> None:
    cart = {
        "currency": "EUR",
        "total": 10,
        "url": "https://shop.example.com/cart",
        "lines": [
            {
                "name": f"Sock {i} <b>&",
                "quantity": i,
                "price": 5,
                "url": "https://s.example/p",
                "image_url": "https://s.example/i.jpg",
            }
            for i in range(3)
        ],
    }
    kwargs = {
        "contact": {"first_name": EVIL, "locale": "de_DE"},
        "message_id": "m-1",
        "context": {"cart": cart},
    }
    assert renderer.email(name).replay_text is not None
    played = renderer.render_email(name, **kwargs).text  # type: ignore[arg-type]
    assert played == _full_text(renderer, name, **kwargs)


def test_text_falls_back_to_a_full_render_for_markup_and_macros(tmp_path: Path) -> None:
    write_email(
        tmp_path,
        "markup",
        mjml("<mj-text>{{ word | replace('a', 'c') }} {{ word }}</mj-text>"),
    )
    write_email(
        tmp_path,
        "macro",
        mjml("<mj-text>{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi(word) }}</mj-text>"),
    )
    renderer = Renderer(tmp_path, Settings(), secret_key=SECRET)
    email = renderer.render_email("markup", contact={}, message_id="m", context={"word": "a<b"})
    assert "c&lt;b a&lt;b" in email.html
    assert "c<b a<b" in email.text  # autoescape made the HTML value markup: not played back
    assert renderer.email("macro").replay_text is None
    email = renderer.render_email("macro", contact={}, message_id="m", context={"word": "a<b"})
    assert "Hi a<b" in email.text
