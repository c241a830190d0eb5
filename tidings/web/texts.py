"""The words of the pages a contact sees (preference centre, opt-in confirmation), per language.

One small catalogue: a language is one more mapping with the same keys (a test checks that
every language has every key English has). The contact's ``locale`` picks the language:
``de_AT`` -> ``de_AT``, then ``de``, then English.

>>> language_for("de_AT"), language_for("pt-BR"), language_for(None)
('de', 'en', 'en')
>>> text("de", "saved")
'Ihre Auswahl ist gespeichert.'
"""

from __future__ import annotations

DEFAULT_LANGUAGE = "en"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "preferences.title": "Your subscriptions",
        "preferences.intro": "Choose what we may send you, and how.",
        "preferences.topics_note": "Topics apply while news and offers are on for that channel.",
        "channel.email": "Email",
        "channel.sms": "Text messages",
        "purpose.marketing": "News and offers",
        "purpose.transactional": "Order and account updates",
        "action.save": "Save my choices",
        "action.unsubscribe": "Unsubscribe from {what}",
        "action.leave": "Unsubscribe from everything",
        "what.channel": "all {channel} news and offers",
        "what.topic": "“{topic}” ({channel})",
        "done.title": "Done",
        "saved": "Your choices are saved.",
        "unsubscribed": "You are unsubscribed from {what}. We will not send it to you again.",
        "left": "You are unsubscribed from everything. We will not write to you again.",
        "confirm.title": "Confirm your subscription",
        "confirm.ask": "Please confirm that {address} wants to receive our news and offers.",
        "confirm.button": "Yes, subscribe me",
        "confirm.done.title": "Subscription confirmed",
        "confirm.done": "Thank you: your subscription is confirmed.",
        "confirm.already": "Your subscription was already confirmed.",
        "confirm.expired.title": "This link has expired",
        "confirm.expired": "This confirmation link is no longer valid (it was good for {hours} "
        "hours), so nothing was changed. Sign up again to get a new link.",
    },
    "de": {
        "preferences.title": "Ihre Abonnements",
        "preferences.intro": "Wählen Sie, was wir Ihnen senden dürfen und auf welchem Weg.",
        "preferences.topics_note": "Themen gelten, solange Neuigkeiten und Angebote für diesen "
        "Kanal eingeschaltet sind.",
        "channel.email": "E-Mail",
        "channel.sms": "SMS",
        "purpose.marketing": "Neuigkeiten und Angebote",
        "purpose.transactional": "Bestell- und Kontoinformationen",
        "action.save": "Auswahl speichern",
        "action.unsubscribe": "Abmelden von {what}",
        "action.leave": "Von allem abmelden",
        "what.channel": "allen Neuigkeiten und Angeboten per {channel}",
        "what.topic": "„{topic}“ ({channel})",
        "done.title": "Erledigt",
        "saved": "Ihre Auswahl ist gespeichert.",
        "unsubscribed": "Sie sind abgemeldet von {what}. Wir senden es Ihnen nicht mehr.",
        "left": "Sie sind von allem abgemeldet. Wir schreiben Ihnen nicht mehr.",
        "confirm.title": "Bitte bestätigen Sie Ihr Abonnement",
        "confirm.ask": "Bitte bestätigen Sie, dass {address} unsere Neuigkeiten und Angebote "
        "erhalten möchte.",
        "confirm.button": "Ja, ich möchte sie erhalten",
        "confirm.done.title": "Abonnement bestätigt",
        "confirm.done": "Vielen Dank: Ihr Abonnement ist bestätigt.",
        "confirm.already": "Ihr Abonnement war bereits bestätigt.",
        "confirm.expired.title": "Dieser Link ist abgelaufen",
        "confirm.expired": "Dieser Bestätigungslink ist nicht mehr gültig (er galt {hours} "
        "Stunden), daher wurde nichts geändert. Melden Sie sich erneut an, um einen neuen Link "
        "zu erhalten.",
    },
}


def language_for(locale: str | None, available: frozenset[str] | None = None) -> str:
    """The language of ``locale`` (``de_AT``, ``de-AT``, ``de``) that the catalogue has:
    the full tag, then the language alone, then English."""
    have = available if available is not None else frozenset(TEXTS)
    if locale:
        tag = locale.strip().replace("-", "_")
        for candidate in (tag, tag.split("_", 1)[0].lower()):
            if candidate in have:
                return candidate
    return DEFAULT_LANGUAGE


def text(language: str, key: str, **values: str) -> str:
    """The text ``key`` in ``language`` (English when that language lacks it), filled in."""
    words = TEXTS.get(language, {}).get(key) or TEXTS[DEFAULT_LANGUAGE][key]
    return words.format(**values) if values else words
