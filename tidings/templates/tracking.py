"""Signed tracking tokens: click, open and unsubscribe URLs (no open redirect).

A token names the message it belongs to and, for a click, the link index *and the target URL*;
an HMAC-SHA256 over all of them (keyed with ``TIDINGS_SECRET_KEY``) makes any change fail.
The click endpoint therefore redirects only to URLs a template really contained, rendered for
that very message: no open redirect, and links whose href holds Jinja (per-contact URLs) work
without a lookup table. Format (every part URL-safe base64 without padding, joined by ``.``)::

    <message id> . <kind><index> . <url> . <signature, 16 bytes>

>>> signer = TokenSigner("s3cret")
>>> token = signer.sign("c", "msg-1", 2, "https://shop.example.com/")
>>> verify_token(token, secret="s3cret")
TrackingToken(kind='c', message_id='msg-1', link_index=2, url='https://shop.example.com/')
>>> verify_token(token[:-2] + "AA", secret="s3cret")
Traceback (most recent call last):
...
templates.tracking.InvalidTokenError: tracking token signature does not match

The compile step precomputes the HMAC state of each static link (kind, index, URL), so per
contact a link costs one ``copy()``, one ``update(message id)`` and one digest.
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

    def prepare(
        self, kind: Kind, index: int | None = None, url: str | None = None
    ) -> PreparedToken:
        inner = self._inner.copy()
        inner.update(_prefix(kind, index, url))
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
