"""Signed tracking tokens: click, open and unsubscribe URLs (no open redirect).

A token names the message it belongs to and, for a click, the link index *and the target URL*;
HMAC-SHA256 (keyed with ``TIDINGS_SECRET_KEY``) over all of them makes any change fail.
The click endpoint therefore redirects only to URLs a template really contained, rendered for
that very message: no open redirect, and links whose href holds Jinja (per-contact URLs) work
without a lookup table. Two formats (every part URL-safe base64 without padding, joined by
``.``); the click endpoint accepts both:

    <message id> . <kind><index> . <url> . <signature, 16 bytes>                      (v1)
    <message id> . <kind><index> . <url> . <template tag, 6 bytes + part MAC, 15 bytes>
                                         . <message MAC, 15 bytes>                     (v2)

v1 signs (kind, index, URL, message id) together: ``sign_token`` makes them, and the tokens of
emails sent before v2 keep working. v2 is what the renderer puts in an email: one MAC per
message instead of one per link. The part MAC covers (template tag, kind, index, URL) and is
computed once per template version and URL; the message MAC covers (template tag, message id),
once per message, shared by its links, its open pixel and its unsubscribe link. A v2 token
verifies only if both do: that message was rendered from that template version (its tag) and
that template produced that URL at that index (or that pixel, that unsubscribe link). For a
static link this is v1's guarantee. For an href holding Jinja (a per-contact URL), v1 also tied
the URL to the one message; v2 ties it to the template, so a recipient could pair their
message's MAC with a URL the same link produced in *another* message of the same template, if
they had that token. The redirect still only goes to a URL tidings rendered, never one chosen
by the sender of the request.

>>> signer = TokenSigner("s3cret")
>>> token = signer.sign("c", "msg-1", 2, "https://shop.example.com/")
>>> verify_token(token, secret="s3cret")
TrackingToken(kind='c', message_id='msg-1', link_index=2, url='https://shop.example.com/')
>>> verify_token(token[:-2] + "AA", secret="s3cret")
Traceback (most recent call last):
...
tidings.templates.tracking.InvalidTokenError: tracking token signature does not match

>>> tokens = TemplateTokens(signer, "9f2c", ["https://shop.example.com/", None])
>>> message = tokens.for_message("https://t.example", "msg-1")
>>> verify_token(message.links[0].rsplit("/", 1)[1], secret="s3cret")
TrackingToken(kind='c', message_id='msg-1', link_index=0, url='https://shop.example.com/')
>>> verify_token(message(1, "https://shop.example.com/p/7").rsplit("/", 1)[1], secret="s3cret").url
'https://shop.example.com/p/7'

"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Literal

from tidings.errors import PermanentError

Kind = Literal["c", "o", "u", "v"]
# v: a double opt-in confirmation link; its "message id" is the opt-in request's id
KINDS: dict[str, str] = {"c": "t/c", "o": "t/o", "u": "u", "v": "confirm"}
SIGNATURE_BYTES = 16
V2_MAC_BYTES = 15  # a multiple of 3: base64 without padding
V2_TAG_BYTES = 6


class InvalidTokenError(PermanentError):
    """A tracking token is malformed or its signature does not match."""


@dataclass(frozen=True, slots=True)
class TrackingToken:
    kind: str
    message_id: str
    link_index: int | None
    url: str | None


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _prefix(kind: str, index: int | None, url: str | None) -> bytes:
    """What the signature covers before the message id; length-prefixed, so unambiguous."""
    raw = (url or "").encode("utf-8")
    return f"tidings/v1\x1f{kind}\x1f{'' if index is None else index}\x1f{len(raw)}:".encode() + (
        raw + b"\x1f"
    )


def _v2_link_prefix(tag: bytes, kind: str, index: int | None, url: str | None) -> bytes:
    raw = (url or "").encode("utf-8")
    middle = f"\x1f{kind}\x1f{'' if index is None else index}\x1f{len(raw)}:"
    return b"tidings/v2\x1fl\x1f" + tag + middle.encode() + raw


def _v2_message_prefix(tag: bytes) -> bytes:
    return b"tidings/v2\x1fm\x1f" + tag + b"\x1f"


def template_tag(version: str) -> bytes:
    """The 6 bytes naming a template version inside v2 tokens."""
    return hashlib.sha256(version.encode("utf-8")).digest()[:V2_TAG_BYTES]


DEV_SIGNING_KEY = "INSECURE-development-key-set-TIDINGS_SECRET_KEY"
"""Signs and checks tokens when TIDINGS_SECRET_KEY is unset: the same for the renderer and the
web app, so links work in development; only the sandbox outbox may send with it."""


def signing_key(settings: Any) -> str:
    """TIDINGS_SECRET_KEY, or the one development key (the renderer and the web app agree)."""
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    return secret or DEV_SIGNING_KEY


class TokenSigner:
    """Signs tokens with one secret; ``prepare`` precomputes the per-link part.

    >>> TokenSigner("k").sign("o", "42").count(".")
    3
    """

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not key:
            raise ValueError("the tracking secret must not be empty")
        # HMAC (RFC 2104) spelled out on hashlib objects: same bytes as hmac.new(key, msg,
        # sha256), but copying C hash states is several times cheaper than hmac.HMAC.copy().
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def _mac(self, prefix: bytes) -> Any:
        """The inner hash state after ``prefix`` (the rest is added by the caller)."""
        inner = self._inner.copy()
        inner.update(prefix)
        return inner

    def _finish(self, inner: Any) -> bytes:
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def prepare(
        self, kind: Kind, index: int | None = None, url: str | None = None
    ) -> PreparedToken:
        inner = self._mac(_prefix(kind, index, url))
        middle = f"{kind}{'' if index is None else index}"
        return PreparedToken(inner, self._outer, f".{middle}.{_b64((url or '').encode('utf-8'))}.")

    def sign(
        self, kind: Kind, message_id: str, index: int | None = None, url: str | None = None
    ) -> str:
        return self.prepare(kind, index, url).token(message_id)


class PreparedToken:
    """A token with everything but the message id signed in advance."""

    __slots__ = ("_inner", "_outer", "_tail")

    def __init__(self, inner: Any, outer: Any, tail: str) -> None:
        self._inner = inner
        self._outer = outer
        self._tail = tail

    def token(self, message_id: str, encoded_id: str | None = None) -> str:
        inner = self._inner.copy()
        inner.update(message_id.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        mid = encoded_id if encoded_id is not None else _b64(message_id.encode("utf-8"))
        return mid + self._tail + _b64(outer.digest()[:SIGNATURE_BYTES])


class TemplateTokens:
    """The tokens of one template version in v2: the part of each link (and of the open pixel
    and the unsubscribe link) is signed once, for a static link when the template is compiled,
    for an href holding Jinja the first time a render produces that URL (up to ``cache`` of
    those are kept). Per message ``for_message`` computes one MAC; every URL is then a string
    join. ``links[i]`` is link i's URL, or None for an href holding Jinja."""

    __slots__ = ("_cache", "_message", "_open", "_signer", "_size", "_static", "_tag", "_unsub")

    def __init__(
        self, signer: TokenSigner, version: str, links: list[str | None], *, cache: int = 4096
    ) -> None:
        self._signer = signer
        self._tag = template_tag(version)
        self._message = signer._mac(_v2_message_prefix(self._tag))
        self._cache: dict[tuple[int, str], str] = {}
        self._size = cache
        self._static = [
            None if url is None else self._tail("c", i, url) for i, url in enumerate(links)
        ]
        self._open = self._tail("o", None, None)
        self._unsub = self._tail("u", None, None)

    def _tail(self, kind: Kind, index: int | None, url: str | None) -> str:
        prefix = _v2_link_prefix(self._tag, kind, index, url)
        mac = self._signer._finish(self._signer._mac(prefix))[:V2_MAC_BYTES]
        where = "" if index is None else index
        return f".{kind}{where}.{_b64((url or '').encode('utf-8'))}.{_b64(self._tag + mac)}."

    def link_tail(self, index: int, url: str) -> str:
        """The signed middle of link ``index`` pointing at ``url`` (cached)."""
        key = (index, url)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            found = self._cache[key] = self._tail("c", index, url)
        return found

    def for_message(
        self, public_url: str, message_id: str, encoded_id: str | None = None
    ) -> MessageTokens:
        inner = self._message.copy()
        inner.update(message_id.encode("utf-8"))
        signature = _b64(self._signer._finish(inner)[:V2_MAC_BYTES])
        mid = encoded_id if encoded_id is not None else _b64(message_id.encode("utf-8"))
        return MessageTokens(self, public_url, mid, signature)


class MessageTokens:
    """One message's tracking URLs: ``links`` (``None`` for a Jinja href), ``open_url``,
    ``unsubscribe_url`` and, called as ``tokens(index, url)``, the click URL of a link whose
    href the render computed."""

    __slots__ = ("_head", "_signature", "_template", "links", "open_url", "unsubscribe_url")

    def __init__(self, template: TemplateTokens, public_url: str, mid: str, signature: str) -> None:
        self._template, self._signature = template, signature
        self._head = head = f"{public_url}/t/c/{mid}"
        self.links = [
            None if tail is None else f"{head}{tail}{signature}" for tail in template._static
        ]
        self.open_url = f"{public_url}/t/o/{mid}{template._open}{signature}"
        self.unsubscribe_url = f"{public_url}/u/{mid}{template._unsub}{signature}"

    def __call__(self, index: int, url: str) -> str:
        return f"{self._head}{self._template.link_tail(index, url)}{self._signature}"


def encode_message_id(message_id: str) -> str:
    """The token's first part; compute once per message when signing many links."""
    return _b64(message_id.encode("utf-8"))


def sign_token(
    kind: Kind,
    message_id: str,
    *,
    secret: str | bytes,
    link_index: int | None = None,
    url: str | None = None,
) -> str:
    """A signed token for ``{public_url}/t/c/``, ``/t/o/``, ``/u/`` or ``/confirm/`` (kind c,
    o, u or v)."""
    if kind not in KINDS:
        raise ValueError(f"token kind must be one of {sorted(KINDS)}, not {kind!r}")
    if kind == "c" and (link_index is None or url is None):
        raise ValueError("a click token needs link_index and url")
    return TokenSigner(secret).sign(kind, message_id, link_index, url)


def verify_token(token: str, *, secret: str | bytes, kind: str | None = None) -> TrackingToken:
    """Check a token's signature and return what it carries; raise ``InvalidTokenError``.

    ``kind`` (c, o, u or v) additionally requires the token to be of that kind, so an open-pixel
    token cannot be replayed against the click endpoint.
    """
    parts = token.split(".")
    if len(parts) == 5 and parts[1]:
        return _verify_v2(token, parts, secret, kind)
    if len(parts) != 4 or not parts[1]:
        raise InvalidTokenError("tracking token is malformed", token=token[:80])
    mid_part, middle, url_part, sig_part = parts
    token_kind, index_text = middle[0], middle[1:]
    if token_kind not in KINDS or (kind is not None and token_kind != kind):
        raise InvalidTokenError("tracking token has the wrong kind", kind=token_kind)
    try:
        message_id = _unb64(mid_part).decode("utf-8")
        url = _unb64(url_part).decode("utf-8") if url_part else None
        signature = _unb64(sig_part)
        index = int(index_text) if index_text else None
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidTokenError("tracking token is malformed", token=token[:80]) from exc
    if index is not None and (index < 0 or index_text != str(index)):
        raise InvalidTokenError("tracking token is malformed", token=token[:80])
    if (token_kind == "c") != (index is not None and url is not None):
        raise InvalidTokenError("tracking token is malformed", token=token[:80])
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    expected = hmac.new(key, _prefix(token_kind, index, url), hashlib.sha256)
    expected.update(message_id.encode("utf-8"))
    if not hmac.compare_digest(expected.digest()[:SIGNATURE_BYTES], signature):
        raise InvalidTokenError("tracking token signature does not match")
    return TrackingToken(token_kind, message_id, index, url)


def _verify_v2(
    token: str, parts: list[str], secret: str | bytes, kind: str | None
) -> TrackingToken:
    mid_part, middle, url_part, tag_part, sig_part = parts
    token_kind, index_text = middle[0], middle[1:]
    if token_kind not in KINDS or (kind is not None and token_kind != kind):
        raise InvalidTokenError("tracking token has the wrong kind", kind=token_kind)
    try:
        message_id = _unb64(mid_part).decode("utf-8")
        url = _unb64(url_part).decode("utf-8") if url_part else None
        tagged, signature = _unb64(tag_part), _unb64(sig_part)
        index = int(index_text) if index_text else None
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidTokenError("tracking token is malformed", token=token[:80]) from exc
    malformed = (
        len(tagged) != V2_TAG_BYTES + V2_MAC_BYTES
        or (index is not None and (index < 0 or index_text != str(index)))
        or (token_kind == "c") != (index is not None and url is not None)
    )
    if malformed:
        raise InvalidTokenError("tracking token is malformed", token=token[:80])
    tag, link_mac = tagged[:V2_TAG_BYTES], tagged[V2_TAG_BYTES:]
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    link_prefix = _v2_link_prefix(tag, token_kind, index, url)
    expected_link = hmac.new(key, link_prefix, hashlib.sha256).digest()[:V2_MAC_BYTES]
    message = _v2_message_prefix(tag) + message_id.encode("utf-8")
    expected_message = hmac.new(key, message, hashlib.sha256).digest()[:V2_MAC_BYTES]
    link_ok = hmac.compare_digest(expected_link, link_mac)
    message_ok = hmac.compare_digest(expected_message, signature)
    if not (link_ok and message_ok):
        raise InvalidTokenError("tracking token signature does not match")
    return TrackingToken(token_kind, message_id, index, url)


def tracking_url(public_url: str, kind: Kind, token: str) -> str:
    """``{public_url}/t/c/{token}`` (click), ``/t/o/`` (open pixel), ``/u/`` (unsubscribe) or
    ``/confirm/`` (double opt-in)."""
    return f"{public_url.rstrip('/')}/{KINDS[kind]}/{token}"


def list_unsubscribe_headers(unsubscribe_url: str, mailto: str | None = None) -> dict[str, str]:
    """RFC 2369 ``List-Unsubscribe`` with the RFC 8058 one-click ``List-Unsubscribe-Post``.

    >>> list_unsubscribe_headers("https://t.example/u/abc", "unsub@example.com")["List-Unsubscribe"]
    '<https://t.example/u/abc>, <mailto:unsub@example.com>'
    """
    value = f"<{unsubscribe_url}>"
    if mailto:
        value += f", <mailto:{mailto.removeprefix('mailto:')}>"
    return {
        "List-Unsubscribe": value,
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
