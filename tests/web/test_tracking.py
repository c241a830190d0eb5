"""Open pixel, click redirect and unsubscribe with the renderer's signed tokens."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tidings.crm.models import Consent, ConsentChange, MessageEvent
from tidings.templates.tracking import sign_token

BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"}


def events(store) -> list[tuple[str, bool, str | None]]:
    with store.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(MessageEvent.type, MessageEvent.machine, MessageEvent.url).order_by(
                    MessageEvent.id
                )
            )
        ]


def test_open_and_click(client, store, seeded) -> None:
    mid = str(seeded["ann_email"])
    opened = client.get(f"/t/o/{sign_token('o', mid, secret='test-secret')}", headers=BROWSER)
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    url = "https://shop.example.com/p/1?utm=x"
    token = sign_token("c", mid, secret="test-secret", link_index=0, url=url)
    clicked = client.get(f"/t/c/{token}", headers=BROWSER)
    assert clicked.status_code == 302 and clicked.headers["location"] == url
    assert client.head(f"/t/c/{token}", headers=BROWSER).status_code == 302
    scanner = {"User-Agent": "Barracuda Sentinel (EE)"}
    assert client.get(f"/t/c/{token}", headers=scanner).status_code == 302
    assert events(store) == [
        ("open", False, None),
        ("click", False, url),
        ("click", True, url),  # HEAD: a prefetcher
        ("click", True, url),  # a link scanner
    ]


def test_forged_edited_and_wrong_kind_tokens_are_404_and_record_nothing(client, store, seeded):
    mid = str(seeded["ann_email"])
    good = sign_token("c", mid, secret="test-secret", link_index=0, url="https://shop.example.com/")
    forged = sign_token("c", mid, secret="other", link_index=0, url="https://evil.example/")
    parts = good.split(".")
    evil = sign_token("c", mid, secret="other", link_index=0, url="https://evil.example/")
    edited = ".".join([*parts[:2], evil.split(".")[2], parts[3]])
    pixel = sign_token("o", mid, secret="test-secret")
    for token in (forged, edited, "garbage", good[:-3], pixel):
        assert client.get(f"/t/c/{token}", headers=BROWSER).status_code == 404, token
    assert client.get(f"/t/o/{good}", headers=BROWSER).status_code == 404
    assert events(store) == []


def marketing_email(store, contact_id: int) -> str:
    with store.connect() as conn:
        return str(
            conn.execute(
                select(Consent.status).where(
                    Consent.contact_id == contact_id,
                    Consent.channel == "email",
                    Consent.purpose == "marketing",
                )
            ).scalar_one()
        )


def test_get_never_unsubscribes_one_click_post_does(client, store, seeded) -> None:
    token = sign_token("u", str(seeded["ann_email"]), secret="test-secret")
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and 'name="pref"' in page.text
    assert marketing_email(store, seeded["ann"]) == "granted"
    response = client.post(
        f"/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and not response.cookies
    assert marketing_email(store, seeded["ann"]) == "revoked"
    with store.connect() as conn:
        source = conn.execute(select(ConsentChange.source)).scalar_one()
    assert source == "unsubscribe:one-click"
    assert client.post(f"/u/{token}x", content="List-Unsubscribe=One-Click").status_code == 404


def test_preference_centre_sets_each_channel_and_purpose(client, store, seeded) -> None:
    token = sign_token("u", str(seeded["bob_email"]), secret="test-secret")
    response = client.post(
        f"/u/{token}",
        data={"action": "save", "pref": ["email:transactional", "sms:transactional"]},
    )
    assert response.status_code == 200
    with store.connect() as conn:
        state = dict(
            (f"{c}:{p}", s)
            for c, p, s in conn.execute(
                select(Consent.channel, Consent.purpose, Consent.status).where(
                    Consent.contact_id == seeded["bob"]
                )
            )
        )
    assert state == {
        "email:marketing": "revoked",
        "sms:marketing": "revoked",
        "email:transactional": "granted",
        "sms:transactional": "granted",
    }
    page = client.get(f"/u/{token}")
    assert 'value="email:marketing">' in page.text  # shown unchecked now


def test_one_click_post_acts_only_with_the_rfc_8058_body(client, store, seeded) -> None:
    """A POST that is neither ``List-Unsubscribe=One-Click`` nor the page's own form (a link
    scanner, a prefetcher) changes nothing: it is answered 400 with the page."""
    token = sign_token("u", str(seeded["ann_email"]), secret="test-secret")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body, headers in [
        ("", form),
        ("", {}),
        ("foo=bar", form),
        ("List-Unsubscribe=Two-Click", form),
        ("List-Unsubscribe=one-click", form),
        ("action=nonsense", form),
        ('{"List-Unsubscribe": "One-Click"}', {"Content-Type": "application/json"}),
    ]:
        response = client.post(f"/u/{token}", content=body, headers=headers)
        assert response.status_code == 400, (body, response.status_code)
        assert 'name="pref"' in response.text  # the page, so a person can still choose
        assert marketing_email(store, seeded["ann"]) == "granted", body
    with store.connect() as conn:
        assert conn.execute(select(ConsentChange.id)).first() is None
    # RFC 8058: the POST content SHOULD be multipart/form-data, MAY be urlencoded
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n--XyZ--\r\n"
    )
    response = client.post(
        f"/u/{token}",
        content=multipart,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert response.status_code == 200 and not response.cookies
    assert marketing_email(store, seeded["ann"]) == "revoked"


def test_without_a_secret_the_renderer_and_the_web_app_use_one_key(
    store, seeded, signer, tmp_path
) -> None:
    """Out of the box (no TIDINGS_SECRET_KEY) an unsubscribe link the renderer wrote must open:
    both sign and check with the same development key (it was two keys: every link 404)."""
    from fastapi.testclient import TestClient

    from tests.web.conftest import PUBLIC_URL, make_settings
    from tidings.crm.models import Contact
    from tidings.templates.render import Renderer
    from tidings.web.app import create_app

    settings = make_settings(str(store.url), signer, tmp_path, secret_key=None)
    renderer = Renderer(settings=settings)
    with store.connect() as conn:
        ann = conn.execute(select(Contact).where(Contact.id == seeded["ann"])).one()
    email = renderer.render_email("welcome", contact=ann._mapping, message_id=seeded["ann_email"])
    unsubscribe = email.headers["List-Unsubscribe"].split("<")[1].split(">")[0]
    with TestClient(create_app(settings, db=store), follow_redirects=False) as client:
        page = client.get(unsubscribe.removeprefix(PUBLIC_URL))
    assert page.status_code == 200, unsubscribe


def test_no_real_provider_sends_without_a_secret(store_url, tmp_path) -> None:
    from tidings.channels.smtp import SmtpChannel
    from tidings.config import Settings
    from tidings.errors import ConfigurationError
    from tidings.journeys.runtime import Runtime

    settings = Settings(database_url=store_url, outbox_dir=tmp_path, secret_key=None)
    assert Runtime.from_settings(settings).dispatcher  # the sandbox outbox may
    smtp = SmtpChannel(host="127.0.0.1", port=1)
    runtime = Runtime.from_settings(settings, channels={"email": smtp, "sms": smtp})
    with pytest.raises(ConfigurationError, match="TIDINGS_SECRET_KEY is not set, and smtp"):
        assert runtime.dispatcher is None  # built before anything is claimed or sent


def test_a_test_sends_links_redirect_count_nowhere_and_never_unsubscribe(
    client, store, seeded
) -> None:
    """``journey test-send`` and seed copies carry the id ``test-<n>`` (journeys/testsend.py)."""
    url = "https://shop.example.com/new"
    click = sign_token("c", "test-7", secret="test-secret", link_index=0, url=url)
    clicked = client.get(f"/t/c/{click}", headers=BROWSER)
    assert clicked.status_code == 302 and clicked.headers["location"] == url
    assert client.get(f"/t/o/{sign_token('o', 'test-7', secret='test-secret')}").status_code == 200
    with store.connect() as conn:  # stored, but belonging to no message: no report counts them
        assert conn.execute(select(MessageEvent.message_id)).scalars().all() == [None, None]
    unsubscribe = sign_token("u", "test-7", secret="test-secret")
    assert client.get(f"/u/{unsubscribe}").status_code == 404
    one_click = client.post(
        f"/u/{unsubscribe}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 404
    assert marketing_email(store, seeded["ann"]) == "granted"
    with store.connect() as conn:
        assert conn.execute(select(ConsentChange.id)).all() == []


def test_rendered_v2_tokens_click_open_and_unsubscribe(client, store, seeded, tmp_path) -> None:
    """The tokens the renderer writes (one MAC per message) work at the endpoints."""
    from tests.templates.conftest import mjml, write_email
    from tidings.config import Settings
    from tidings.templates.render import Renderer

    url = "https://shop.example.com/p/1?utm=x"
    write_email(tmp_path, "t", mjml(f'<mj-text><a href="{url}">Shop</a></mj-text>'))
    renderer = Renderer(
        tmp_path, Settings(public_url="https://t.example"), secret_key="test-secret"
    )
    mid = str(seeded["ann_email"])
    email = renderer.render_email("t", contact={}, message_id=mid)
    click = email.html.split('href="https://t.example/t/c/')[1].split('"')[0]
    pixel = email.html.split('src="https://t.example/t/o/')[1].split('"')[0]
    unsubscribe = email.headers["List-Unsubscribe"].split("/u/")[1].split(">")[0]
    assert click.count(".") == pixel.count(".") == unsubscribe.count(".") == 4
    clicked = client.get(f"/t/c/{click}", headers=BROWSER)
    assert clicked.status_code == 302 and clicked.headers["location"] == url
    assert client.get(f"/t/o/{pixel}", headers=BROWSER).status_code == 200
    assert client.get(f"/t/c/{pixel}", headers=BROWSER).status_code == 404  # wrong kind
    assert client.get(f"/u/{unsubscribe}", headers=BROWSER).status_code == 200
    assert events(store) == [("click", False, url), ("open", False, None)]
