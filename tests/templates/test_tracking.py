"""Tracked links, signed tokens, open pixel and List-Unsubscribe headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.templates.conftest import SECRET, mjml, write_email
from tidings.config import Settings
from tidings.templates.render import Renderer
from tidings.templates.tracking import InvalidTokenError, sign_token, verify_token

LINKS = mjml(
    '<mj-text><a href="https://shop.example.com/a?x=1&amp;y=2">A</a>\n'
    '<a href="https://shop.example.com/b" data-track="off">B</a>\n'
    '<a href="https://shop.example.com/c" notrack>C</a>\n'
    '<a href="mailto:help@example.com">mail</a>\n'
    '<a href="https://shop.example.com/p/{{ sku }}?ref=mail">D</a>\n'
    '<a href="{{ unsubscribe_url }}">unsubscribe</a></mj-text>\n'
    '<mj-button href="https://shop.example.com/e" rel="notrack">E</mj-button>'
)


@pytest.fixture
def links_renderer(tmp_path: Path, settings: Settings) -> Renderer:
    write_email(tmp_path, "links", LINKS)
    return Renderer(tmp_path, settings, secret_key=SECRET)


def _tokens(html: str, kind: str) -> list[str]:
    return re.findall(rf"https://t\.example\.com/{kind}/([A-Za-z0-9_\-.]+)", html)


def test_links_rewritten_to_signed_tokens_that_round_trip(links_renderer: Renderer) -> None:
    email = links_renderer.render_email(
        "links", contact={"first_name": "Ada"}, message_id="msg-7", context={"sku": "A 1"}
    )
    clicks = [verify_token(t, secret=SECRET, kind="c") for t in _tokens(email.html, "t/c")]
    assert [(c.message_id, c.link_index, c.url) for c in clicks] == [
        ("msg-7", 0, "https://shop.example.com/a?x=1&y=2"),
        ("msg-7", 1, "https://shop.example.com/p/A 1?ref=mail"),  # per-contact href, signed too
    ]
    # the text part carries the same tracked links
    assert _tokens(email.text, "t/c") == _tokens(email.html, "t/c")
    assert "https://shop.example.com/a?x=1" not in email.html


def test_untracked_links_stay_as_written_without_marker(links_renderer: Renderer) -> None:
    html = links_renderer.render_email("links", contact={}, message_id="m", context={"sku": 1}).html
    assert '<a href="https://shop.example.com/b">B</a>' in html
    assert '<a href="https://shop.example.com/c">C</a>' in html
    assert 'href="https://shop.example.com/e"' in html
    assert "notrack" not in html and "data-track" not in html
    assert 'href="mailto:help@example.com"' in html


def test_open_pixel_and_unsubscribe(links_renderer: Renderer) -> None:
    email = links_renderer.render_email("links", contact={}, message_id="m-9", context={"sku": 1})
    (pixel,) = _tokens(email.html, "t/o")
    assert verify_token(pixel, secret=SECRET, kind="o").message_id == "m-9"
    unsubscribe = _tokens(email.html, "u")
    assert unsubscribe and verify_token(unsubscribe[0], secret=SECRET, kind="u").message_id == "m-9"
    assert email.headers == {
        "List-Unsubscribe": f"<https://t.example.com/u/{unsubscribe[0]}>, "
        "<mailto:unsub@example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert f'<img src="https://t.example.com/t/o/{pixel}" width="1" height="1"' in email.html


def test_tampered_or_foreign_tokens_fail() -> None:
    token = sign_token("c", "msg-1", secret=SECRET, link_index=0, url="https://shop.example.com/")
    assert verify_token(token, secret=SECRET).url == "https://shop.example.com/"
    mid, middle, url, sig = token.split(".")
    evil = sign_token("c", "msg-1", secret="other", link_index=0, url="https://evil.example/")
    forged = [
        f"{mid}.{middle}.{evil.split('.')[2]}.{sig}",  # swap the target: open redirect attempt
        f"{mid}.c1.{url}.{sig}",  # another index
        f"{sign_token('o', 'msg-2', secret=SECRET).split('.')[0]}.{middle}.{url}.{sig}",
        evil,  # signed with another key
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        "garbage",
        "a.b.c.d",
    ]
    for bad in forged:
        with pytest.raises(InvalidTokenError):
            verify_token(bad, secret=SECRET)
    with pytest.raises(InvalidTokenError):  # an open token is not accepted as a click
        verify_token(sign_token("o", "msg-1", secret=SECRET), secret=SECRET, kind="c")


def test_dev_key_is_flagged_insecure(tmp_path: Path, settings: Settings) -> None:
    write_email(tmp_path, "links", LINKS)
    assert Renderer(tmp_path, settings).insecure_key
    assert not Renderer(tmp_path, settings, secret_key=SECRET).insecure_key


def test_static_links_share_one_message_signature(links_renderer: Renderer) -> None:
    """One MAC per message: every static link of a message carries the same message part."""
    email = links_renderer.render_email("links", contact={}, message_id="m-3", context={"sku": 1})
    other = links_renderer.render_email("links", contact={}, message_id="m-4", context={"sku": 1})
    mine, dynamic = _tokens(email.html, "t/c")  # link 1's href holds Jinja
    theirs, _ = _tokens(other.html, "t/c")
    assert mine.count(".") == dynamic.count(".") == 4
    assert mine.split(".")[4] == dynamic.split(".")[4]  # one message MAC for all its links
    assert mine.split(".")[0] != theirs.split(".")[0] and mine.split(".")[4] != theirs.split(".")[4]
    assert mine.split(".")[1:4] == theirs.split(".")[1:4]  # the link part is per template
    assert verify_token(theirs, secret=SECRET).message_id == "m-4"
    m_mid, m_idx, m_url, m_tag, m_sig = mine.split(".")
    o_sig = theirs.split(".")[4]
    two = _two_links_token(links_renderer)
    forged = [
        f"{m_mid}.{m_idx}.{m_url}.{m_tag}.{o_sig}",  # another message's MAC
        f"{theirs.split('.')[0]}.{m_idx}.{m_url}.{m_tag}.{m_sig}",  # another message id
        f"{m_mid}.c1.{m_url}.{m_tag}.{m_sig}",  # another index
        f"{m_mid}.{m_idx}.{two.split('.')[2]}.{m_tag}.{m_sig}",  # another URL
        f"{m_mid}.{m_idx}.{two.split('.')[2]}.{two.split('.')[3]}.{m_sig}",  # another template
        f"{m_mid}.o.{m_url}.{m_tag}.{m_sig}",
        f"{m_mid}.{m_idx}.{m_url}.{m_tag[:-2]}.{m_sig}",
    ]
    for bad in forged:
        with pytest.raises(InvalidTokenError):
            verify_token(bad, secret=SECRET)
    with pytest.raises(InvalidTokenError):
        verify_token(mine, secret="other")
    with pytest.raises(InvalidTokenError):
        verify_token(mine, secret=SECRET, kind="o")


def _two_links_token(renderer: Renderer) -> str:
    """Link 0 of another template (same message id), whose URL differs."""
    write_email(
        renderer.root, "other", mjml('<mj-text><a href="https://evil.example/">x</a></mj-text>')
    )
    email = renderer.render_email("other", contact={}, message_id="m-3")
    (token,) = _tokens(email.html, "t/c")
    assert verify_token(token, secret=SECRET).url == "https://evil.example/"
    return token


def test_v1_click_tokens_stay_valid() -> None:
    """Tokens in emails sent before v2 (one signature per link) still redirect."""
    token = sign_token("c", "msg-9", secret=SECRET, link_index=3, url="https://shop.example.com/x")
    assert token.count(".") == 3
    found = verify_token(token, secret=SECRET, kind="c")
    assert (found.message_id, found.link_index, found.url) == (
        "msg-9",
        3,
        "https://shop.example.com/x",
    )
