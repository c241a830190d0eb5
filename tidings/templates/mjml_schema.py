"""The MJML components and their attributes, and a check of a template against them.

MRML (the compiler) copies an unknown tag such as ``<mj-sectoin>`` into the HTML as it is and
ignores an unknown attribute such as ``colr``: the email looks broken and nothing says why.
``check_mjml`` reads the MJML (Jinja blanked out, lines kept) and reports each unknown ``mj-``
tag and each attribute a component does not take, with its file:line and the closest known
name. What an ending tag holds (``mj-text``, ``mj-button``, ``mj-raw``, ``mj-table``...) is
HTML and is not checked.

>>> for problem in check_mjml('<mjml><mj-body>\\n<mj-sectoin><mj-text colr="red">Hi</mj-text>'
...     '</mj-sectoin></mj-body></mjml>', path="t.mjml"):
...     print(problem)
t.mjml:2: unknown MJML tag <mj-sectoin>: did you mean <mj-section>?
t.mjml:2: <mj-text> has no attribute 'colr': did you mean 'color'?

The table follows the MJML 4 documentation (https://documentation.mjml.io/).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from html.parser import HTMLParser

JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)

PADDING = frozenset({"padding", "padding-top", "padding-right", "padding-bottom", "padding-left"})
BORDER = frozenset(
    {"border", "border-top", "border-right", "border-bottom", "border-left", "border-radius"}
)
FONT = frozenset(
    {
        "color",
        "font-family",
        "font-size",
        "font-style",
        "font-weight",
        "letter-spacing",
        "line-height",
        "text-decoration",
        "text-transform",
    }
)
LINK = frozenset({"href", "rel", "target", "title", "name"})
ICONS = frozenset(
    {
        "icon-align",
        "icon-height",
        "icon-position",
        "icon-unwrapped-alt",
        "icon-unwrapped-url",
        "icon-width",
        "icon-wrapped-alt",
        "icon-wrapped-url",
    }
)
SECTION = (
    PADDING
    | BORDER
    | {
        "background-color",
        "background-position",
        "background-position-x",
        "background-position-y",
        "background-repeat",
        "background-size",
        "background-url",
        "direction",
        "full-width",
        "gap",
        "text-align",
        "text-padding",
    }
)
GLOBAL = frozenset({"mj-class", "css-class"})
ANY = None  # mj-all and mj-class (in mj-attributes) take any attribute

#: Tag -> the attributes it takes (besides mj-class and css-class).
ATTRIBUTES: dict[str, frozenset[str] | None] = {
    "mjml": frozenset({"lang", "dir", "owa", "version"}),
    "mj-head": frozenset(),
    "mj-body": frozenset({"background-color", "width"}),
    "mj-include": frozenset({"path", "type", "css-inline"}),
    "mj-raw": frozenset({"position"}),
    # head
    "mj-attributes": frozenset(),
    "mj-all": ANY,
    "mj-class": ANY,
    "mj-breakpoint": frozenset({"width"}),
    "mj-font": frozenset({"name", "href"}),
    "mj-html-attributes": frozenset(),
    "mj-selector": frozenset({"path"}),
    "mj-html-attribute": frozenset({"name"}),
    "mj-preview": frozenset(),
    "mj-style": frozenset({"inline"}),
    "mj-title": frozenset(),
    # layout
    "mj-section": SECTION,
    "mj-wrapper": SECTION,
    "mj-group": frozenset({"background-color", "direction", "vertical-align", "width"}),
    "mj-column": PADDING
    | BORDER
    | {
        "background-color",
        "direction",
        "inner-background-color",
        "inner-border",
        "inner-border-top",
        "inner-border-right",
        "inner-border-bottom",
        "inner-border-left",
        "inner-border-radius",
        "vertical-align",
        "width",
    },
    "mj-hero": PADDING
    | {
        "background-color",
        "background-height",
        "background-position",
        "background-url",
        "background-width",
        "border-radius",
        "container-background-color",
        "height",
        "inner-background-color",
        "inner-padding",
        "inner-padding-top",
        "inner-padding-right",
        "inner-padding-bottom",
        "inner-padding-left",
        "mode",
        "vertical-align",
        "width",
    },
    # content
    "mj-text": PADDING | FONT | {"align", "container-background-color", "height", "vertical-align"},
    "mj-button": PADDING
    | BORDER
    | FONT
    | LINK
    | {
        "align",
        "background-color",
        "container-background-color",
        "height",
        "inner-padding",
        "text-align",
        "vertical-align",
        "width",
    },
    "mj-image": PADDING
    | BORDER
    | LINK
    | {
        "align",
        "alt",
        "container-background-color",
        "fluid-on-mobile",
        "font-size",
        "height",
        "sizes",
        "src",
        "srcset",
        "usemap",
        "width",
    },
    "mj-divider": PADDING
    | {
        "align",
        "border-color",
        "border-style",
        "border-width",
        "container-background-color",
        "width",
    },
    "mj-spacer": PADDING | BORDER | {"container-background-color", "height", "vertical-align"},
    "mj-table": PADDING
    | FONT
    | {
        "align",
        "border",
        "cellpadding",
        "cellspacing",
        "container-background-color",
        "role",
        "table-layout",
        "width",
    },
    "mj-navbar": PADDING
    | {
        "align",
        "base-url",
        "hamburger",
        "ico-align",
        "ico-close",
        "ico-color",
        "ico-font-family",
        "ico-font-size",
        "ico-line-height",
        "ico-open",
        "ico-padding",
        "ico-padding-top",
        "ico-padding-right",
        "ico-padding-bottom",
        "ico-padding-left",
        "ico-text-decoration",
        "ico-text-transform",
    },
    "mj-navbar-link": PADDING | FONT | LINK,
    "mj-social": PADDING
    | FONT
    | {
        "align",
        "border-radius",
        "container-background-color",
        "icon-height",
        "icon-padding",
        "icon-size",
        "inner-padding",
        "mode",
        "table-layout",
        "text-padding",
    },
    "mj-social-element": PADDING
    | FONT
    | LINK
    | {
        "align",
        "alt",
        "background-color",
        "border-radius",
        "icon-height",
        "icon-padding",
        "icon-position",
        "icon-size",
        "sizes",
        "src",
        "srcset",
        "text-padding",
        "vertical-align",
    },
    "mj-accordion": PADDING | ICONS | {"border", "container-background-color", "font-family"},
    "mj-accordion-element": ICONS | {"background-color", "border", "font-family"},
    "mj-accordion-title": PADDING | FONT | {"background-color"},
    "mj-accordion-text": PADDING | FONT | {"background-color"},
    "mj-carousel": PADDING
    | {
        "align",
        "border-radius",
        "container-background-color",
        "icon-width",
        "left-icon",
        "right-icon",
        "tb-border",
        "tb-border-radius",
        "tb-hover-border-color",
        "tb-selected-border-color",
        "tb-width",
        "thumbnails",
    },
    "mj-carousel-image": LINK | {"alt", "border-radius", "src", "thumbnails-src"},
}

#: Tags whose content is HTML (or CSS, or text): nothing inside them is checked.
ENDING_TAGS = frozenset(
    {
        "mj-text",
        "mj-button",
        "mj-table",
        "mj-raw",
        "mj-navbar-link",
        "mj-accordion-title",
        "mj-accordion-text",
        "mj-social-element",
        "mj-style",
        "mj-title",
        "mj-preview",
        "mj-html-attribute",
    }
)


@dataclass(frozen=True, slots=True)
class MjmlProblem:
    path: str
    line: int
    message: str
    is_tag: bool  # an unknown tag (else an unknown attribute)

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


def _closest(name: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


class _Checker(HTMLParser):
    def __init__(self, path: str, first_line: int) -> None:
        super().__init__(convert_charrefs=True)
        self.path = path
        self.line_shift = first_line - 1
        self.problems: list[MjmlProblem] = []
        self.raw_until: str | None = None  # inside an ending tag: its name
        self.in_attributes = 0  # depth inside <mj-attributes>

    def _problem(self, message: str, *, is_tag: bool) -> None:
        line = self.getpos()[0] + self.line_shift
        self.problems.append(MjmlProblem(self.path, line, message, is_tag))

    def _check(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        """Check one start tag; False when it is not a known MJML tag."""
        if not tag.startswith("mj-") and tag != "mjml":
            return False
        if tag not in ATTRIBUTES:
            known = _closest(tag, list(ATTRIBUTES))
            hint = f": did you mean <{known}>?" if known else ": see https://documentation.mjml.io/"
            self._problem(f"unknown MJML tag <{tag}>{hint}", is_tag=True)
            return False
        allowed = ATTRIBUTES[tag]
        if allowed is ANY:
            return True
        takes = allowed | GLOBAL
        for name, _ in attrs:
            if name in takes or name.startswith("xmlns"):
                continue
            known = _closest(name, sorted(takes))
            hint = (
                f": did you mean {known!r}?"
                if known
                else f": <{tag}> takes {', '.join(sorted(takes)) or 'no attributes'}"
            )
            self._problem(f"<{tag}> has no attribute {name!r}{hint}", is_tag=False)
        return True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.raw_until is not None:
            return
        known = self._check(tag, attrs)
        if tag == "mj-attributes":
            self.in_attributes += 1
        elif known and tag in ENDING_TAGS and not self.in_attributes:
            self.raw_until = tag

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.raw_until is None:
            self._check(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.raw_until is not None:
            if tag == self.raw_until:
                self.raw_until = None
            return
        if tag == "mj-attributes" and self.in_attributes:
            self.in_attributes -= 1


def _blank_jinja(source: str) -> str:
    """Jinja fragments removed, their line breaks kept (so lines still match the file)."""
    return JINJA.sub(lambda m: "\n" * m.group().count("\n"), source)


def check_mjml(source: str, *, path: str, first_line: int = 1) -> list[MjmlProblem]:
    """Unknown ``mj-`` tags and attributes of the MJML ``source`` (a file's body starting at
    ``first_line``), in file order."""
    checker = _Checker(path, first_line)
    checker.feed(_blank_jinja(source))
    checker.close()
    return checker.problems
