"""Compile an email template once: front matter, MJML -> HTML, CSS inlining, tracking, text part.

The result is a ``CompiledEmail`` whose ``html`` and ``text`` are plain Jinja sources; per
contact only Jinja runs (see ``templates.render``). Steps:

1. split the YAML front matter (subject, preheader, from_name, ...) from the MJML body;
   check the MJML against the component table (``templates.mjml_schema``): an unknown tag
   is an error here, an unknown attribute is reported by ``tidings templates check``;
2. replace every Jinja fragment (``{{ }}``, ``{% %}``) by an inert placeholder, remembering the
   file and line it came from, so neither MRML nor the CSS inliner can touch it;
3. MJML -> HTML with ``mjml-python`` (MRML), ``<mj-include>`` served from the templates folder;
4. inline the CSS (``css-inline``; Gmail ignores most ``<style>`` rules);
5. rewrite every ``<a href>`` to a tracked URL, add the open pixel;
6. derive the text part from that HTML (unless the front matter or a ``NAME.txt.j2`` sidecar
   gives one), then put the Jinja fragments back.

>>> c = compile_email("---\\nsubject: Hi {{ contact.first_name }}\\n---\\n"
...     "<mjml><mj-body><mj-section><mj-column><mj-text>"
...     '<a href="https://example.com/x">shop</a></mj-text></mj-column></mj-section></mj-body></mjml>',
...     name="demo")
>>> [link.url for link in c.links], "{{ _links[0] }}" in c.html, "shop ({{ _links[0] }})" in c.text
(['https://example.com/x'], True, True)
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from tidings.errors import InputError
from tidings.templates.mjml_schema import MjmlProblem, check_mjml

JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
PLACEHOLDER = re.compile(r"(?:<!--)?TDJ(\d+)X(?:-->)?")
INCLUDE = re.compile(r"<mj-include\s[^>]*?path\s*=\s*[\"']([^\"']+)[\"']")
A_TAG = re.compile(r"<a\s[^>]*>", re.I)
ATTR = re.compile(r"""\s+([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>"']+))?""")
UNTRACKED_EXPRESSIONS = ("unsubscribe_url", "view_in_browser_url", "confirm_url")
FRONT_KEYS = {
    "subject",
    "preheader",
    "from_name",
    "from_email",
    "reply_to",
    "text",
    "track_links",
    "track_opens",
}


@dataclass(frozen=True, slots=True)
class Fragment:
    """A Jinja fragment of the source and where it came from."""

    source: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Link:
    """A tracked link: ``url`` for a static href, ``expression`` for an href holding Jinja."""

    index: int
    url: str | None
    expression: str | None = None


@dataclass
class CompiledEmail:
    name: str
    path: str
    version: str  # sha256 of the template and every partial it includes
    subjects: dict[str, str]  # variant -> Jinja source ("default" when not A/B)
    preheader: str | None
    from_name: str | None
    from_email: str | None
    reply_to: str | None
    html: str
    text: str
    links: list[Link]
    front_lines: dict[str, int]  # front matter key -> file line
    body_line: int  # file line of the first body line
    text_from: str  # "derived", "front matter" or the sidecar path
    # (output line -> fragments) per part, to point render errors at file:line
    line_maps: dict[str, dict[int, list[Fragment]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # attributes MJML does not know (``templates check`` fails on them; sending goes on)
    mjml_problems: list[MjmlProblem] = field(default_factory=list)
    # The derived text part without a second evaluation of its expressions (see ``replay``):
    # ``html`` that also records each ``{{ }}`` value, the text that plays them back, and the
    # fragments the text plays. None when the text is not derived or cannot be replayed.
    record_html: str | None = None
    replay_text: str | None = None
    replay_fragments: tuple[int, ...] = ()


def split_front_matter(source: str, path: str) -> tuple[dict[str, Any], dict[str, int], str, int]:
    """(front matter, key -> line, body, line of the body's first line)."""
    if not source.startswith("---"):
        return {}, {}, source, 1
    lines = source.splitlines(keepends=True)
    for end in range(1, len(lines)):
        if lines[end].rstrip() == "---":
            break
    else:
        raise InputError(
            "front matter opened with --- is never closed",
            location=f"{path}:1",
            hint="end the YAML block with a line holding only ---",
        )
    text = "".join(lines[1:end])
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = (mark.line + 2) if mark is not None else 1
        raise InputError(
            f"front matter is not valid YAML: {exc}", location=f"{path}:{line}"
        ) from exc
    if not isinstance(data, dict):
        raise InputError("front matter must be a mapping of keys", location=f"{path}:2")
    key_lines: dict[str, int] = {}
    for number, line in enumerate(lines[1:end], start=2):
        key = re.match(r"([A-Za-z_]+)\s*:", line)
        if key and key.group(1) not in key_lines:
            key_lines[key.group(1)] = number
    for key in data:
        if key not in FRONT_KEYS:
            raise InputError(
                f"unknown front matter key {key!r}",
                location=f"{path}:{key_lines.get(str(key), 2)}",
                hint=f"known keys: {', '.join(sorted(FRONT_KEYS))}",
            )
    return data, key_lines, "".join(lines[end + 1 :]), end + 2


class _Protector:
    """Swaps Jinja fragments for placeholders ``TDJ<n>X`` and back."""

    def __init__(self) -> None:
        self.fragments: list[Fragment] = []

    def protect(self, text: str, file: str, first_line: int) -> str:
        def swap(match: re.Match[str]) -> str:
            if match.group().startswith("{#"):
                return ""
            line = first_line + text.count("\n", 0, match.start())
            return self.add(Fragment(match.group(), file, line))

        return JINJA.sub(swap, text)

    def add(self, fragment: Fragment) -> str:
        """``TDJ<n>X``; a ``{% %}`` tag goes in a comment, which the HTML parser of the CSS
        inliner leaves in place (text inside a table would be moved before the table)."""
        self.fragments.append(fragment)
        if fragment.source.startswith("{%"):
            return f"<!--TDJ{len(self.fragments) - 1}X-->"
        return f"TDJ{len(self.fragments) - 1}X"

    def restore(
        self, text: str, wrap: Callable[[int, str], str] | None = None
    ) -> tuple[str, dict[int, list[Fragment]]]:
        """The text with the Jinja fragments back (``wrap(index, source)`` may rewrite each)."""
        out: list[str] = []
        line_map: dict[int, list[Fragment]] = {}
        pos, line = 0, 1
        for match in PLACEHOLDER.finditer(text):
            line += text.count("\n", pos, match.start())
            fragment = self.fragments[int(match.group(1))]
            out.append(text[pos : match.start()])
            index = int(match.group(1))
            out.append(fragment.source if wrap is None else wrap(index, fragment.source))
            line_map.setdefault(line, []).append(fragment)
            line += fragment.source.count("\n")
            pos = match.end()
        out.append(text[pos:])
        return "".join(out), line_map


def _localized(found: Path, locales: Sequence[str]) -> Path:
    """``partials/footer.de.mjml`` for ``partials/footer.mjml`` when the chain has ``de``."""
    for locale in locales:
        candidate = found.with_name(f"{found.stem}.{locale}{found.suffix}")
        if candidate.is_file():
            return candidate
    return found


def _resolve_include(
    root: Path, base: Path, ref: str, path: str, locales: Sequence[str] = ()
) -> Path:
    for folder in (base, root):
        candidate = (folder / ref).resolve()
        if candidate.is_file() and candidate.is_relative_to(root.resolve()):
            return _localized(candidate, locales)
        if not candidate.suffix and candidate.with_suffix(".mjml").is_file():
            return _localized(candidate.with_suffix(".mjml"), locales)
    raise InputError(
        f"<mj-include path={ref!r}> names no file inside the templates folder",
        location=path,
        hint=f"put the partial under {root}/partials/ and include it as ../partials/NAME.mjml",
    )


def collect_includes(
    source: str, *, root: Path, base: Path, path: str, locales: Sequence[str] = ()
) -> dict[str, Path]:
    """Every partial ``source`` includes (recursively): reference as written -> file; with
    ``locales`` (a fallback chain) a partial's locale variant is taken where one exists."""
    found: dict[str, Path] = {}
    pending = [(source, base)]
    while pending:
        text, folder = pending.pop()
        for ref in INCLUDE.findall(text):
            if ref in found:
                continue
            target = _resolve_include(root, folder, ref, path, locales)
            found[ref] = target
            pending.append((target.read_text(encoding="utf-8"), target.parent))
    return found


def content_version(source: str, includes: dict[str, Path], lang: str | None = None) -> str:
    digest = hashlib.sha256(source.encode("utf-8"))
    if lang:  # the same file compiled for another language is another version
        digest.update(f"\x00lang={lang}".encode())
    for ref in sorted(includes):
        digest.update(f"\x00{ref}\x00".encode())
        digest.update(includes[ref].read_bytes())
    return digest.hexdigest()


MJML_TAG = re.compile(r"<mjml(?=[\s>/])[^>]*>")


def set_lang(body: str, lang: str) -> str:
    """``<mjml lang="...">`` unless the template sets one (MRML writes ``lang="und"`` else).

    >>> set_lang("<mjml><mj-body/></mjml>", "de-AT")
    '<mjml lang="de-AT"><mj-body/></mjml>'
    >>> set_lang('<mjml lang="fr"><mj-body/></mjml>', "de")
    '<mjml lang="fr"><mj-body/></mjml>'
    """
    match = MJML_TAG.search(body)
    if match is None or re.search(r"\slang\s*=", match.group()):
        return body
    tag = match.group()
    return (
        body[: match.start()]
        + f'<mjml lang="{html_lib.escape(lang)}"'
        + tag[5:]
        + body[match.end() :]
    )


def _mjml_to_html(body: str, loader: Callable[[str], str], path: str, line: int) -> str:
    import mjml

    try:
        return str(mjml.mjml2html(body, include_loader=loader))  # type: ignore[arg-type]
    except Exception as exc:  # MRML raises a plain ValueError-like error with the position
        raise InputError(f"MJML does not compile: {exc}", location=f"{path}:{line}") from exc


def _inline_css(html: str) -> str:
    import css_inline

    inliner = css_inline.CSSInliner(
        keep_style_tags=True, keep_at_rules=True, load_remote_stylesheets=False
    )
    return str(inliner.inline(html))


def _is_untracked(attrs: list[tuple[str, str | None]]) -> tuple[bool, list[tuple[str, str | None]]]:
    """Whether the marketer opted this link out, and the attributes without the marker."""
    untracked = False
    kept: list[tuple[str, str | None]] = []
    for name, value in attrs:
        low = name.lower()
        if low == "notrack" or (
            low == "data-track" and (value or "").lower() in ("off", "false", "no")
        ):
            untracked = True
            continue
        if low == "rel" and value and "notrack" in value.split():
            untracked = True
            rest = " ".join(v for v in value.split() if v != "notrack")
            if rest:
                kept.append((name, rest))
            continue
        kept.append((name, value))
    return untracked, kept


def _format_attrs(attrs: list[tuple[str, str | None]]) -> str:
    return "".join(f" {n}" if v is None else f' {n}="{html_lib.escape(v)}"' for n, v in attrs)


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _href_expression(href: str, protector: _Protector) -> str | None:
    """A Jinja expression building an href that holds ``{{ }}`` parts; None if it has ``{% %}``."""
    parts: list[str] = []
    pos = 0
    for match in PLACEHOLDER.finditer(href):
        if match.start() > pos:
            parts.append(_jinja_string(href[pos : match.start()]))
        source = protector.fragments[int(match.group(1))].source
        if not source.startswith("{{"):
            return None
        inner = source[2:-2].strip("-+ \n\t")
        parts.append(f"({inner})|string")
        pos = match.end()
    if pos < len(href):
        parts.append(_jinja_string(href[pos:]))
    return " ~ ".join(parts)


def rewrite_links(
    html: str, protector: _Protector, *, track: bool, warnings: list[str]
) -> tuple[str, list[Link]]:
    """Every trackable ``<a href>`` -> ``{{ _links[i] }}`` or ``{{ _track(i, expr) }}``."""
    links: list[Link] = []

    def rewrite(match: re.Match[str]) -> str:
        tag = match.group()
        attrs: list[tuple[str, str | None]] = []
        for attr in ATTR.finditer(tag[2:].rstrip(">/")):
            raw = attr.group(2)
            value = None if raw is None else html_lib.unescape(raw.strip("\"'"))
            attrs.append((attr.group(1), value))
        untracked, attrs = _is_untracked(attrs)
        href = next((v for n, v in attrs if n.lower() == "href"), None)
        if untracked or not track or href is None:
            return f"<a{_format_attrs(attrs)}>" if untracked else tag
        fragments = [protector.fragments[int(i)] for i in PLACEHOLDER.findall(href)]
        if any(word in f.source for f in fragments for word in UNTRACKED_EXPRESSIONS):
            return tag
        if fragments:
            expression = _href_expression(href, protector)
            if expression is None:
                warnings.append(
                    f"{fragments[0].file}:{fragments[0].line}: link {href!r} holds a {{% %}} tag "
                    "and stays untracked; build the URL in a {% set %} first"
                )
                return tag
            link = Link(len(links), None, expression)
            new_href = protector.add(
                Fragment(
                    f"{{{{ _track({link.index}, {expression}) }}}}",
                    fragments[0].file,
                    fragments[0].line,
                )
            )
        else:
            if not re.match(r"https?://", href, re.I):
                return tag  # mailto:, tel:, #anchor: nothing to track
            link = Link(len(links), href)
            new_href = protector.add(Fragment(f"{{{{ _links[{link.index}] }}}}", "", 0))
        links.append(link)
        attrs = [(n, new_href if n.lower() == "href" else v) for n, v in attrs]
        return f"<a{_format_attrs(attrs)}>"

    return A_TAG.sub(rewrite, html), links


PIXEL = (
    '<img src="{src}" width="1" height="1" alt="" '
    'style="display:block;height:1px;width:1px;border:0;margin:0;padding:0;" />'
)


def add_open_pixel(html: str, protector: _Protector) -> str:
    tag = PIXEL.format(src=protector.add(Fragment("{{ _open_url }}", "", 0)))
    at = html.lower().rfind("</body>")
    return html[:at] + tag + html[at:] if at >= 0 else html + tag


BLOCK = {"p", "div", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "li", "section", "ul", "ol"}
SKIP = {"head", "style", "script", "title"}
VOID = {"img", "br", "hr", "meta", "link", "input", "col", "area", "base", "source", "wbr"}


class _TextExtractor(HTMLParser):
    """HTML -> readable text: blocks become lines, links become ``text (url)``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.stack: list[bool] = []  # per open element: does it hide its content?
        self.link: tuple[str, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            if tag == "br" and not self.skip_depth:
                self.out.append("\n")
            elif tag == "hr" and not self.skip_depth:
                self.out.append("\n----\n")
            return
        style = (dict(attrs).get("style") or "").replace(" ", "").lower()
        hides = tag in SKIP or "display:none" in style
        self.stack.append(hides)
        self.skip_depth += hides
        if self.skip_depth:
            return
        if tag in BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag == "a":
            self.link = (dict(attrs).get("href") or "", len(self.out))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self.stack:
            return
        was_skipping = self.skip_depth
        self.skip_depth -= self.stack.pop()
        if was_skipping:
            return
        if tag == "a" and self.link is not None:
            href, start = self.link
            label = " ".join("".join(self.out[start:]).split())
            if label and href and href != label and not href.startswith("#"):
                self.out.append(f" ({href})")  # image-only links (icons) stay out of the text
            self.link = None
        if tag in BLOCK:
            self.out.append("\n")

    def handle_comment(self, data: str) -> None:
        if not self.skip_depth and PLACEHOLDER.fullmatch(data):
            self.out.append(f"<!--{data}-->")  # a {% %} tag: keep it in the text part

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.out.append(data)


def html_to_text(html: str) -> str:
    """Plain text of an email's HTML; a line holding only ``{% %}`` placeholders joins the one
    before, so loops and conditions add no blank lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n"


def _join_control_lines(text: str, protector: _Protector) -> str:
    out: list[str] = []
    for line in text.split("\n"):
        ids = PLACEHOLDER.findall(line)
        only_control = (
            ids
            and not PLACEHOLDER.sub("", line).strip()
            and all(protector.fragments[int(i)].source.startswith("{%") for i in ids)
        )
        if only_control and out:
            out[-1] += line.strip()
        else:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


OUTPUT = re.compile(r"\{\{([-+]?)(.*?)([-+]?)\}\}\Z", re.S)
NO_REPLAY_TAGS = re.compile(
    r"\{%[-+]?\s*(?:macro|call|include|import|from|extends|block|filter|autoescape)\b"
)


def replay(html: str, text: str, protector: _Protector) -> tuple[str, str, tuple[int, ...]] | None:
    """A derived text part shows the values of the HTML's own ``{{ }}`` fragments, under the
    same ``{% %}`` tags. So the HTML records each value it outputs (``_record``, a filter: no
    sandbox call) and the text plays them back in order, per fragment (``_play``), instead of
    evaluating every expression a second time. The renderer falls back to the full text
    template when a value is markup (its text could differ: the HTML pass autoescapes) or the
    values do not line up. Templates with macros, includes or blocks are not replayed."""
    if any(NO_REPLAY_TAGS.match(f.source) for f in protector.fragments):
        return None

    played: set[int] = set()

    def play(index: int, source: str) -> str:
        match = OUTPUT.match(source)
        if match is None:
            return source
        played.add(index)
        left, _, right = match.groups()
        return f"{{{{{left} _tape|_play({index}) {right}}}}}"

    def record(index: int, source: str) -> str:
        match = OUTPUT.match(source)
        if match is None or index not in played:  # e.g. the preheader, the open pixel
            return source
        left, inner, right = match.groups()
        return f"{{{{{left} ({inner})|_record(_tape, {index}) {right}}}}}"

    replay_text = protector.restore(text, play)[0]
    record_html = protector.restore(html, record)[0]
    return record_html, replay_text, tuple(sorted(played))


def _check_syntax(env: Any, source: str, path: str, first_line: int, what: str) -> None:
    from jinja2 import TemplateSyntaxError

    try:
        env.parse(source)
    except TemplateSyntaxError as exc:
        line = first_line + (exc.lineno or 1) - 1
        raise InputError(
            f"Jinja syntax error in {what}: {exc.message}", location=f"{path}:{line}"
        ) from exc


def _check_components(
    body: str, path: str, body_line: int, includes: dict[str, Path]
) -> list[MjmlProblem]:
    """Unknown MJML attributes of the body and its partials; an unknown tag is an error:
    MRML would copy ``<mj-sectoin>`` into the HTML as it is."""
    problems = check_mjml(body, path=path, first_line=body_line)
    for target in includes.values():
        if target.suffix == ".mjml":
            problems += check_mjml(target.read_text(encoding="utf-8"), path=str(target))
    tags = [p for p in problems if p.is_tag]
    if tags:
        more = f" (and {len(tags) - 1} more)" if len(tags) > 1 else ""
        raise InputError(
            tags[0].message + more,
            location=tags[0].location,
            hint="MJML components: https://documentation.mjml.io/#components",
        )
    return problems


def compile_email(
    source: str,
    *,
    name: str,
    path: str | None = None,
    root: Path | None = None,
    text_sidecar: Path | None = None,
    syntax_env: Any = None,
    lang: str | None = None,
    locales: Sequence[str] = (),
) -> CompiledEmail:
    """Compile one email template (the text of a ``.mjml`` file with its front matter).

    ``lang`` (BCP 47) becomes the ``lang`` of the HTML unless the ``<mjml>`` tag sets one;
    ``locales`` is the fallback chain partials are chosen by (``templates.locales``)."""
    from jinja2.sandbox import SandboxedEnvironment

    path = path or f"{name}.mjml"
    root = root or (Path(path).parent.parent if path else Path("."))
    base = Path(path).parent
    env = syntax_env or SandboxedEnvironment()
    front, key_lines, body, body_line = split_front_matter(source, path)
    includes = collect_includes(body, root=root, base=base, path=path, locales=locales)
    sidecar_text = text_sidecar.read_text(encoding="utf-8") if text_sidecar else None
    version = content_version(source + (sidecar_text or ""), includes, lang)

    raw_subject = front.get("subject")
    if raw_subject is None:
        raise InputError(
            "the front matter has no subject",
            location=f"{path}:1",
            hint="start the file with ---, subject: ..., ---",
        )
    subjects = (
        {str(k): str(v) for k, v in raw_subject.items()}
        if isinstance(raw_subject, dict)
        else {"default": str(raw_subject)}
    )
    for variant, subject in subjects.items():
        _check_syntax(env, subject, path, key_lines.get("subject", 1), f"subject {variant!r}")
    for key in ("preheader", "text"):
        if front.get(key) is not None:
            _check_syntax(env, str(front[key]), path, key_lines.get(key, 1) + (key == "text"), key)
    _check_syntax(env, body, path, body_line, "the body")
    for ref, target in includes.items():
        _check_syntax(env, target.read_text(encoding="utf-8"), str(target), 1, f"partial {ref}")
    mjml_problems = _check_components(body, path, body_line, includes)

    if front.get("preheader") is not None and "<mj-preview" not in body:
        preview = "<mj-preview>{{ preheader }}</mj-preview>"
        if "<mj-head>" in body:
            body = body.replace("<mj-head>", "<mj-head>" + preview, 1)
        else:
            body = body.replace("<mjml>", f"<mjml><mj-head>{preview}</mj-head>", 1)

    if lang:
        body = set_lang(body, lang)
    protector = _Protector()
    protected = protector.protect(body, path, body_line)
    included = {
        ref: protector.protect(p.read_text(encoding="utf-8"), str(p), 1)
        for ref, p in includes.items()
    }

    def loader(ref: str) -> str:
        for key, text in included.items():
            if ref == key or ref.lstrip("./") == key.lstrip("./"):
                return text
        raise ValueError(f"unknown include {ref!r}")

    html = _inline_css(_mjml_to_html(protected, loader, path, body_line))
    seen = {int(i) for i in PLACEHOLDER.findall(html)}
    for index, fragment in enumerate(protector.fragments):
        if index not in seen and fragment.source.startswith("{%"):
            raise InputError(
                f"MJML dropped the Jinja tag {fragment.source!r}",
                location=f"{fragment.file}:{fragment.line}",
                hint="between MJML components wrap Jinja tags in <mj-raw>...</mj-raw>",
            )
    warnings: list[str] = []
    html, links = rewrite_links(
        html, protector, track=front.get("track_links", True) is not False, warnings=warnings
    )
    if front.get("track_opens", True) is not False:
        html = add_open_pixel(html, protector)

    replayed = None
    if sidecar_text is not None:
        text, text_from = sidecar_text, str(text_sidecar)
        _check_syntax(env, text, text_from, 1, "the text part")
        text_map: dict[int, list[Fragment]] = {
            n: [Fragment(line, text_from, n)] for n, line in enumerate(text.splitlines(), start=1)
        }
    elif front.get("text") is not None:
        text, text_from = str(front["text"]), "front matter"
        first = key_lines.get("text", 1) + 1
        text_map = {
            n: [Fragment(line, path, first + n - 1)]
            for n, line in enumerate(text.splitlines(), start=1)
        }
    else:
        derived = _join_control_lines(html_to_text(html), protector)
        replayed = replay(html, derived, protector)
        text, text_map = protector.restore(derived)
        text_from = "derived"
    html, html_map = protector.restore(html)
    return CompiledEmail(
        name=name,
        path=path,
        version=version,
        subjects=subjects,
        preheader=None if front.get("preheader") is None else str(front["preheader"]),
        from_name=front.get("from_name"),
        from_email=front.get("from_email"),
        reply_to=front.get("reply_to"),
        html=html,
        text=text,
        links=links,
        front_lines=key_lines,
        body_line=body_line,
        text_from=text_from,
        line_maps={"html": html_map, "text": text_map},
        warnings=warnings,
        mjml_problems=mjml_problems,
        record_html=replayed[0] if replayed else None,
        replay_text=replayed[1] if replayed else None,
        replay_fragments=replayed[2] if replayed else (),
    )
