"""Render compiled templates per contact: only Jinja runs here.

>>> renderer = Renderer("templates")                                     # doctest: +SKIP
>>> email = renderer.render_email("welcome", contact={"first_name": "Ada", "locale": "de_DE"},
...                               message_id="m-1")                       # doctest: +SKIP
>>> email.subject, email.headers["List-Unsubscribe-Post"]                 # doctest: +SKIP
('Willkommen, Ada', 'List-Unsubscribe=One-Click')

The Jinja environments are sandboxed (``SandboxedEnvironment``: no ``__class__``, no
``__globals__``), use ``StrictUndefined`` (a missing variable is an error, found by
``tidings templates check`` before any send), autoescape HTML only, and render ``None`` as "".
They also limit each render (templates/limits.py): ``**`` and ``*`` results, the output
(``TIDINGS_TEMPLATE_MAX_OUTPUT`` characters per part) and the time
(``TIDINGS_TEMPLATE_TIMEOUT`` seconds); over a limit is a ``TemplateRenderError`` at file:line.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markupsafe
from jinja2 import StrictUndefined, Template
from jinja2.runtime import new_context
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from tidings.config import Settings, get_settings
from tidings.errors import InputError, PermanentError
from tidings.templates.compiler import CompiledEmail, Fragment, compile_email
from tidings.templates.filters import FILTERS
from tidings.templates.limits import (
    DEFAULT_MAX_OUTPUT,
    LimitedSandbox,
    bounded_concat,
    set_deadline,
)
from tidings.templates.locales import choose, fallback_chain, html_lang, split_stem
from tidings.templates.sms import count_segments, non_gsm_characters
from tidings.templates.tracking import (
    TemplateTokens,
    TokenSigner,
    encode_message_id,
    list_unsubscribe_headers,
    signing_key,
)

log = logging.getLogger(__name__)
CONTACT_FIELDS = (
    "id",
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "locale",
    "timezone",
)


class TemplateRenderError(PermanentError):
    """A template failed for one contact; ``location`` is ``file:line`` of the source."""

    def __init__(self, message: str, *, location: str, template: str) -> None:
        super().__init__(message, location=location, template=template)
        self.location = location


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    preheader: str
    from_name: str | None
    from_email: str | None
    reply_to: str | None
    html: str
    text: str
    headers: dict[str, str]
    template: str
    version: str
    variant: str
    locale: str = ""  # the variant's locale (TIDINGS_DEFAULT_LOCALE for the default file)


@dataclass(frozen=True, slots=True)
class RenderedSms:
    body: str
    encoding: str
    segments: int
    characters: int
    units: int
    template: str
    version: str
    warnings: tuple[str, ...] = ()
    locale: str = ""  # the variant's locale (TIDINGS_DEFAULT_LOCALE for the default file)


def contact_context(contact: Any) -> dict[str, Any]:
    """A plain dict for ``contact`` (a mapping, a ``crm.models.Contact`` or any object)."""
    if isinstance(contact, Mapping):
        data = dict(contact)
        for name in CONTACT_FIELDS:
            data.setdefault(name, None)
    else:
        data = {name: getattr(contact, name, None) for name in CONTACT_FIELDS}
        data["attributes"] = getattr(contact, "attributes", None)
    if not isinstance(data.get("attributes"), Mapping):
        data["attributes"] = {}
    return data


def _finalize(value: Any) -> Any:
    return "" if value is None else value


_escape_inner = getattr(markupsafe, "_escape_inner", None)


def _escape_output(value: Any) -> Any:
    """markupsafe's ``escape`` for what a ``{{ }}`` writes into HTML: the same characters
    (``&<>'"``), but a plain string comes back as a plain string, not a new ``Markup``."""
    if type(value) is str and _escape_inner is not None:
        return _escape_inner(value)
    return markupsafe.escape(value)


class _ReplayMiss(Exception):
    """The text part cannot be played back from the HTML pass: render it in full."""


def _record(value: Any, tape: dict[int, list[Any]], index: int) -> Any:
    """``{{ (expr)|_record(_tape, N) }}`` in the HTML: keeps the value for the text part."""
    found = tape.get(index)
    if found is None:
        tape[index] = [value]
    else:
        found.append(value)
    return value


def _play(tape: dict[int, list[Any]], index: int) -> Any:
    """``{{ _tape|_play(N) }}`` in the derived text: the value the HTML pass output there."""
    found = tape.get(index)
    if not found:
        raise _ReplayMiss(index)
    value = found.pop(0)
    if isinstance(value, Markup):  # the HTML pass autoescaped: the text may differ
        raise _ReplayMiss(index)
    return value


def make_environment(
    *, autoescape: bool, max_output: int = DEFAULT_MAX_OUTPUT
) -> SandboxedEnvironment:
    """The sandboxed environment templates render in (HTML: autoescape; text/SMS: none),
    with limits on ``**``, ``*``, output and time (templates/limits.py)."""
    env = LimitedSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters.update(FILTERS)
    env.filters["_record"] = _record
    env.filters["_play"] = _play
    env.max_output = max_output
    return env


@dataclass
class _Email:
    compiled: CompiledEmail
    html: Template
    text: Template
    replay: Template | None  # the derived text played back from the HTML pass
    subjects: dict[str, Template | str]
    preheader: Template | str
    tokens: TemplateTokens
    globals: dict[str, Any]  # the templates' globals as a plain dict
    filenames: dict[str, str] = field(default_factory=dict)
    locale: str = ""


@dataclass
class _Sms:
    path: str
    version: str
    template: Template
    locale: str = ""


class Renderer:
    """Loads, compiles (once per content hash) and renders the templates of one folder."""

    def __init__(
        self,
        templates_dir: str | Path | None = None,
        settings: Settings | None = None,
        *,
        secret_key: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.root = Path(templates_dir or self.settings.templates_dir)
        self.public_url = (public_url or self.settings.public_url).rstrip("/")
        self.insecure_key = secret_key is None and self.settings.secret_key is None
        if self.insecure_key:
            log.warning("TIDINGS_SECRET_KEY is unset: tracking tokens use an INSECURE dev key")
        self.signer = TokenSigner(secret_key or signing_key(self.settings))
        self.max_output = self.settings.template_max_output
        self.timeout = self.settings.template_timeout
        self.html_env = make_environment(autoescape=True, max_output=self.max_output)
        self.text_env = make_environment(autoescape=False, max_output=self.max_output)
        self.default_locale = self.settings.default_locale
        self._by_version: dict[str, _Email] = {}
        self._emails: dict[tuple[str, str | None], _Email] = {}
        self._sms: dict[tuple[str, str | None], _Sms] = {}
        self._variants: dict[str, dict[str, dict[str, Path]]] = {}
        self._chosen: dict[tuple[str, str, str | None], str | None] = {}
        self.compile_count = 0  # MJML compilations done (the cache test counts them)

    # -- discovery -------------------------------------------------------------------------
    def email_path(self, name: str, locale: str | None = None) -> Path:
        """The file of ``name`` (its ``locale`` variant's when given and present)."""
        found = self.locales(name, "email").get(locale or "")
        return found or self.root / "email" / f"{name}.mjml"

    def sms_path(self, name: str, locale: str | None = None) -> Path:
        found = self.locales(name, "sms").get(locale or "")
        return found or self.root / "sms" / f"{name}.sms.j2"

    def email_names(self) -> list[str]:
        """Templates with a default file (``NAME.mjml``); locale variants are not names."""
        return sorted(
            p.name.removesuffix(".mjml")
            for p in (self.root / "email").glob("*.mjml")
            if "." not in p.name.removesuffix(".mjml")
        )

    def sms_names(self) -> list[str]:
        return sorted(
            p.name.removesuffix(".sms.j2")
            for p in (self.root / "sms").glob("*.sms.j2")
            if "." not in p.name.removesuffix(".sms.j2")
        )

    def locales(self, name: str, channel: str = "email") -> dict[str, Path]:
        """Locale -> file of every locale variant of ``name`` (``welcome.de.mjml``: ``de``)."""
        index = self._variants.get(channel)
        if index is None:
            folder, ext = ("email", ".mjml") if channel == "email" else ("sms", ".sms.j2")
            index = {}
            for path in sorted((self.root / folder).glob(f"*{ext}")):
                base, locale, _ = split_stem(path.name.removesuffix(ext))
                if locale is not None:
                    index.setdefault(base, {})[locale] = path
            self._variants[channel] = index
        return index.get(name, {})

    def choose_locale(self, name: str, locale: str | None, channel: str = "email") -> str | None:
        """The variant a contact with ``locale`` gets (None: the default file), by the
        fallback chain ``de_AT`` -> ``de`` -> default (``templates.locales``); remembered per
        template and locale (a newsletter asks the same question for every contact)."""
        key = (channel, name, locale)
        try:
            return self._chosen[key]
        except KeyError:
            found = self._chosen[key] = choose(locale, self.locales(name, channel))
            return found

    # -- compile ---------------------------------------------------------------------------
    def _template(self, env: SandboxedEnvironment, source: str, filename: str) -> Template:
        code = env.compile(source, name=filename, filename=filename)
        template = env.template_class.from_code(env, code, env.make_globals(None), None)
        if env.autoescape:
            # the compiled module's ``escape`` is only applied to what ``{{ }}`` writes
            template.root_render_func.__globals__["escape"] = _escape_output
        return template

    def email(self, name: str, *, reload: bool = False, locale: str | None = None) -> CompiledEmail:
        """``name`` compiled; ``locale``: that variant's (a key of ``locales(name)``)."""
        return self._email(name, reload=reload, locale=locale).compiled

    def _email(self, name: str, *, reload: bool = False, locale: str | None = None) -> _Email:
        if reload:
            self._variants.clear()
            self._chosen.clear()
        cached = self._emails.get((name, locale))
        if cached is not None and not reload:
            return cached
        path = self.email_path(name)
        if not path.is_file():
            raise InputError(
                f"no email template {name!r}",
                location=str(path),
                hint=f"available: {', '.join(self.email_names()) or 'none'}",
            )
        if locale is not None:
            path = self.email_path(name, locale)
        stem = path.name.removesuffix(".mjml")
        sidecar = path.with_name(f"{stem}.txt.j2")
        source = path.read_text(encoding="utf-8")
        from tidings.templates.compiler import collect_includes, content_version, split_front_matter

        language = locale or self.default_locale
        chain = fallback_chain(language)
        body = split_front_matter(source, str(path))[2]
        includes = collect_includes(
            body, root=self.root, base=path.parent, path=str(path), locales=chain
        )
        sidecar_text = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else ""
        version = content_version(source + sidecar_text, includes, html_lang(language))
        entry = self._by_version.get(version)
        if entry is None:
            entry = self._build(
                compile_email(
                    source,
                    name=name,
                    path=str(path),
                    root=self.root,
                    text_sidecar=sidecar if sidecar.is_file() else None,
                    syntax_env=self.html_env,
                    lang=html_lang(language),
                    locales=chain,
                ),
                language,
            )
            self._by_version[version] = entry
        self._emails[(name, locale)] = entry
        return entry

    def _build(self, compiled: CompiledEmail, locale: str) -> _Email:
        self.compile_count += 1
        tag = f"{compiled.path}@{compiled.version[:12]}"
        names = {
            part: f"<tidings {part} {tag}>" for part in ("html", "text", "subject", "preheader")
        }

        def maybe(env: SandboxedEnvironment, source: str, part: str) -> Template | str:
            return self._template(env, source, names[part]) if "{" in source else source

        replayed = compiled.record_html is not None and compiled.replay_text is not None
        return _Email(
            compiled=compiled,
            html=self._template(
                self.html_env,
                compiled.record_html if replayed else compiled.html,  # type: ignore[arg-type]
                names["html"],
            ),
            text=self._template(self.text_env, compiled.text, names["text"]),
            replay=(
                self._template(self.text_env, compiled.replay_text, names["text"])  # type: ignore[arg-type]
                if replayed
                else None
            ),
            subjects={v: maybe(self.text_env, s, "subject") for v, s in compiled.subjects.items()},
            preheader=maybe(self.text_env, compiled.preheader or "", "preheader"),
            globals=dict(self.html_env.make_globals(None)),
            tokens=TemplateTokens(
                self.signer,
                compiled.version,
                [link.url for link in sorted(compiled.links, key=lambda link: link.index)],
            ),
            filenames=names,
            locale=locale,
        )

    def _sms_template(self, name: str, locale: str | None = None) -> _Sms:
        cached = self._sms.get((name, locale))
        if cached is not None:
            return cached
        path = self.sms_path(name)
        if not path.is_file():
            raise InputError(
                f"no SMS template {name!r}",
                location=str(path),
                hint=f"available: {', '.join(self.sms_names()) or 'none'}",
            )
        if locale is not None:
            path = self.sms_path(name, locale)
        source = path.read_text(encoding="utf-8")
        from jinja2 import TemplateSyntaxError

        try:
            template = self._template(self.text_env, source, str(path))
        except TemplateSyntaxError as exc:
            raise InputError(
                f"Jinja syntax error: {exc.message}", location=f"{path}:{exc.lineno}"
            ) from exc
        import hashlib

        entry = _Sms(
            str(path),
            hashlib.sha256(source.encode()).hexdigest(),
            template,
            locale or self.default_locale,
        )
        self._sms[(name, locale)] = entry
        return entry

    # -- render ----------------------------------------------------------------------------
    def render_email(
        self,
        name: str,
        *,
        contact: Any,
        message_id: str | int,
        context: Mapping[str, Any] | None = None,
        variant: str | None = None,
        locale: str | None = None,
    ) -> RenderedEmail:
        """Subject, preheader, HTML and text of ``name`` for one contact and message, in the
        locale variant the contact's locale picks (or ``locale``'s, given instead)."""
        person = contact_context(contact)
        entry = self._email(name, locale=self.choose_locale(name, locale or person["locale"]))
        compiled = entry.compiled
        mid = str(message_id)
        tokens = entry.tokens.for_message(self.public_url, mid, encode_message_id(mid))
        # the template's globals, then the caller's context, then ours (as Jinja would merge)
        values: dict[str, Any] = dict(entry.globals)
        if context:
            values.update(context)
        values["contact"] = person
        values["message_id"] = mid
        values["unsubscribe_url"] = tokens.unsubscribe_url
        if variant is None:
            variant = next(iter(compiled.subjects))
        subject_t = entry.subjects.get(variant)
        if subject_t is None:
            raise InputError(
                f"template {name!r} has no subject variant {variant!r}",
                location=f"{compiled.path}:{compiled.front_lines.get('subject', 1)}",
                hint=f"variants: {', '.join(compiled.subjects)}",
            )
        part = "subject"
        values["_links"] = tokens.links
        values["_track"] = tokens
        values["_open_url"] = tokens.open_url
        values["preheader"] = ""
        tape: dict[int, list[Any]] = {}
        values["_tape"] = tape
        limit = self.max_output
        set_deadline(self.timeout)
        try:
            # one Jinja context per contact for all four parts, on ``values`` itself (Jinja's
            # own would copy it and walk the globals' ChainMap twice)
            jinja_context = new_context(
                self.html_env, entry.html.name, entry.html.blocks, values, True, entry.globals
            )
            try:
                subject = (
                    subject_t
                    if isinstance(subject_t, str)
                    else bounded_concat(subject_t.root_render_func(jinja_context), limit)
                )
                part = "preheader"
                preheader = (
                    entry.preheader
                    if isinstance(entry.preheader, str)
                    else bounded_concat(entry.preheader.root_render_func(jinja_context), limit)
                )
                jinja_context.vars["preheader"] = preheader
                part = "html"
                html = bounded_concat(entry.html.root_render_func(jinja_context), limit)
                part = "text"
                text = self._replay(entry, jinja_context, tape)
                if text is None:
                    text = bounded_concat(entry.text.root_render_func(jinja_context), limit)
            except Exception:
                self.html_env.handle_exception()  # re-raises with template file/line frames
        except Exception as exc:
            raise self._error(exc, entry, part) from exc
        finally:
            set_deadline(None)
        headers = list_unsubscribe_headers(tokens.unsubscribe_url, self.settings.unsubscribe_mailto)
        return RenderedEmail(
            subject=clean_header(subject),
            preheader=" ".join(preheader.split()),
            from_name=None if compiled.from_name is None else clean_header(compiled.from_name),
            from_email=compiled.from_email,
            reply_to=compiled.reply_to,
            html=html,
            text=text,
            headers=headers,
            template=name,
            version=compiled.version,
            variant=variant,
            locale=entry.locale,
        )

    def _replay(self, entry: _Email, jinja_context: Any, tape: dict[int, list[Any]]) -> str | None:
        """The derived text part from the values the HTML pass recorded; None when they do
        not line up (then the full text template runs, and reports any error itself)."""
        if entry.replay is None:
            return None
        try:
            text = bounded_concat(entry.replay.root_render_func(jinja_context), self.max_output)
        except Exception:
            return None
        if any(tape.get(index) for index in entry.compiled.replay_fragments):
            return None  # the HTML output a fragment more often than the text did
        return text

    def render_sms(
        self,
        name: str,
        *,
        contact: Any,
        message_id: str | int | None = None,
        context: Mapping[str, Any] | None = None,
        locale: str | None = None,
    ) -> RenderedSms:
        """The SMS body with its encoding and exact segment count; warns above the limit.
        The locale variant is chosen as for email."""
        person = contact_context(contact)
        chosen = self.choose_locale(name, locale or person["locale"], "sms")
        entry = self._sms_template(name, chosen)
        values: dict[str, Any] = dict(context) if context else {}
        values["contact"] = person
        values["message_id"] = None if message_id is None else str(message_id)
        set_deadline(self.timeout)
        try:
            try:
                chunks = entry.template.root_render_func(entry.template.new_context(values))
                body = bounded_concat(chunks, self.max_output).strip()
            except Exception:
                self.text_env.handle_exception()  # re-raises with template file/line frames
        except Exception as exc:
            line = _template_line(exc, entry.path)
            raise TemplateRenderError(
                _describe(exc), location=f"{entry.path}:{line or 1}", template=name
            ) from exc
        finally:
            set_deadline(None)
        count = count_segments(body)
        warnings: list[str] = []
        limit = self.settings.sms_segment_limit
        if count.segments > limit:
            warnings.append(
                f"{count.segments} segments ({count.encoding}) exceed "
                f"TIDINGS_SMS_SEGMENT_LIMIT={limit}"
            )
        if count.encoding == "UCS-2":
            chars = "".join(non_gsm_characters(body))[:10]
            warnings.append(f"UCS-2 (70 per SMS) because of: {chars}")
        return RenderedSms(
            body,
            count.encoding,
            count.segments,
            count.characters,
            count.units,
            name,
            entry.version,
            tuple(warnings),
            entry.locale,
        )

    def _error(self, exc: Exception, entry: _Email, part: str) -> TemplateRenderError:
        compiled = entry.compiled
        message = _describe(exc)
        if part in ("subject", "preheader"):
            line = compiled.front_lines.get(part, 1)
            return TemplateRenderError(
                f"{part}: {message}", location=f"{compiled.path}:{line}", template=compiled.name
            )
        out_line = _template_line(exc, entry.filenames[part])
        fragment = _pick_fragment(compiled.line_maps.get(part, {}), out_line, message)
        location = (
            f"{fragment.file}:{fragment.line}"
            if fragment and fragment.file
            else f"{compiled.path}:{compiled.body_line}"
        )
        where = f" in {fragment.source}" if fragment and fragment.file else ""
        return TemplateRenderError(
            f"{part}{where}: {message}", location=location, template=compiled.name
        )


def clean_header(value: str) -> str:
    """One line: CR, LF and other control characters become spaces, runs collapse.

    >>> clean_header("Hello\\r\\nBcc: x@example.com")
    'Hello Bcc: x@example.com'
    """
    if value.isprintable():  # no control character nor line separator: only collapse
        return " ".join(value.split())
    return " ".join(re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", " ", value).split())


def _describe(exc: Exception) -> str:
    kind = type(exc).__name__
    return f"{kind}: {exc}"


def _template_line(exc: BaseException, filename: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _pick_fragment(
    line_map: dict[int, list[Fragment]], out_line: int | None, message: str
) -> Fragment | None:
    if out_line is None or not line_map:
        return None
    candidates = line_map.get(out_line)
    if not candidates:
        before = [n for n in line_map if n <= out_line]
        candidates = line_map[max(before)] if before else []
    names = re.findall(r"'([^']+)'", message)
    for fragment in candidates:
        if fragment.file and any(n in fragment.source for n in names if n != "dict object"):
            return fragment
    return next((f for f in candidates if f.file), None)
