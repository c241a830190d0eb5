"""Locale variants of a template: which file a contact gets, and the ``lang`` it is written in.

A template may have variants named by a locale between its name and its extension:
``email/welcome.mjml`` (the default, written in ``TIDINGS_DEFAULT_LOCALE``),
``email/welcome.de.mjml``, ``email/welcome.pt_BR.mjml``; the same for the text sidecar
(``welcome.de.txt.j2``), SMS (``sms/order_shipped.pl.sms.j2``) and partials
(``partials/footer.de.mjml``, used by the German variant's ``<mj-include path="../partials/
footer.mjml">``). A contact's locale picks the most specific variant, then drops one subtag at a
time, then takes the default:

>>> fallback_chain("de_AT")
['de_AT', 'de']
>>> fallback_chain("pt-BR")
['pt_BR', 'pt']
>>> fallback_chain("sr_Latn_RS")
['sr_Latn_RS', 'sr_Latn', 'sr']
>>> fallback_chain("no such") , fallback_chain(None)
([], [])
>>> choose("de_AT", {"de", "pl"}), choose("pt_BR", {"de", "pl"}), choose("pl_PL", {"de", "pl"})
('de', None, 'pl')
>>> html_lang("pt_BR"), html_lang("de")
('pt-BR', 'de')

File names take the locale as BCP 47 or POSIX (``pt-BR`` or ``pt_BR``); it is normalised as the
importer normalises a contact's locale (babel), so ``welcome.pt-br.mjml`` serves ``pt_BR``.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

from babel import Locale, UnknownLocaleError


@lru_cache(maxsize=4096)
def parse(value: str | None) -> str | None:
    """``value`` in the store's form (``de_AT``, ``pt_BR``, ``de``), or None if it is no locale.

    >>> parse("de-at"), parse("PT_br"), parse("xx"), parse("")
    ('de_AT', 'pt_BR', None, None)
    """
    text = (value or "").strip().replace("-", "_")
    if not text:
        return None
    try:
        return str(Locale.parse(text))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def fallback_chain(locale: str | None) -> list[str]:
    """The locales to try for ``locale``, most specific first (the default comes after)."""
    parsed = parse(locale)
    if parsed is None:
        return []
    parts = parsed.split("_")
    return ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]


def choose(locale: str | None, available: Collection[str]) -> str | None:
    """The variant of ``available`` a contact with ``locale`` gets; None: the default."""
    return next((candidate for candidate in fallback_chain(locale) if candidate in available), None)


def html_lang(locale: str) -> str:
    """The BCP 47 tag for an HTML ``lang`` attribute (``pt_BR`` -> ``pt-BR``)."""
    return locale.replace("_", "-")


def split_stem(stem: str) -> tuple[str, str | None, str | None]:
    """``welcome.de`` -> (``welcome``, ``de``, None); a suffix that is no locale comes back as
    the third item, for ``templates check`` to report.

    >>> split_stem("welcome"), split_stem("welcome.pt-BR"), split_stem("welcome.v2")
    (('welcome', None, None), ('welcome', 'pt_BR', None), ('welcome', None, 'v2'))
    """
    name, dot, suffix = stem.partition(".")
    if not dot:
        return name, None, None
    locale = parse(suffix)
    return (name, locale, None) if locale else (name, None, suffix)
