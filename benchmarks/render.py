"""Personalised email renders per second against the plain-Jinja ceiling, same run.

    .venv/bin/python benchmarks/render.py            # 20,000 contacts
    .venv/bin/python benchmarks/render.py -n 5000

Renders a ~5 KB newsletter (MJML with a loop, 12 links, locale filters) for N contacts through
``Renderer.render_email`` (subject, preheader, HTML, text part, signed tracked links, pixel,
List-Unsubscribe headers) and, as the baseline, ``Template.render`` of the same already-compiled
HTML in a stock ``SandboxedEnvironment(autoescape=True)`` with the same context and the link
URLs precomputed. The ratio is the cost of everything we add per contact beyond Jinja itself
(goal: >= 0.70). For reference it also renders the same HTML in tidings' own environment
(``make_environment``: output and time limits, ``None`` as "", and its faster attribute
lookup and escaping), so what the environment gains and what the extras cost show apart.
Before timing, it checks what a render produced: every click, open and unsubscribe token
verifies for its message, and the text part played back from the HTML pass equals the text
part rendered in full. Exits 1 when the goal is missed.
"""

# ruff: noqa: E501  (the MJML sample keeps its natural line lengths)
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jinja2 import StrictUndefined  # noqa: E402
from jinja2.sandbox import SandboxedEnvironment  # noqa: E402

from tidings.config import Settings  # noqa: E402
from tidings.templates.filters import FILTERS  # noqa: E402
from tidings.templates.render import Renderer, contact_context, make_environment  # noqa: E402
from tidings.templates.tracking import verify_token  # noqa: E402

GOAL = 0.70

ARTICLE = """
    <mj-section>
      <mj-column width="35%"><mj-image src="https://news.example.com/img/{n}.jpg" href="https://news.example.com/a/{n}" /></mj-column>
      <mj-column width="65%">
        <mj-text font-size="18px" font-weight="bold">Story {n}: what changed this week in our shop</mj-text>
        <mj-text>We rebuilt the spring collection around linen and walnut. Read how the makers chose
          the materials and why prices went down, not up.</mj-text>
        <mj-button href="https://news.example.com/a/{n}?utm_source=newsletter">Read story {n}</mj-button>
      </mj-column>
    </mj-section>"""

NEWSLETTER = (
    """---
subject: "{{ contact | first_name('Hello') }}, your {{ issue.month }} newsletter"
preheader: "Four stories and {{ issue.offer | money(issue.currency) }} off for you."
from_name: Tidings News
---
<mjml>
  <mj-head><mj-attributes><mj-all font-family="Helvetica, Arial" /></mj-attributes></mj-head>
  <mj-body background-color="#f4f4f4">
    <mj-section><mj-column>
      <mj-text font-size="22px">Hi {{ contact | first_name("there") }},</mj-text>
      <mj-text>Here is {{ issue.month }} at Tidings. Your points: {{ contact.attributes.points }}.
        Member since {{ contact.attributes.since | date("long") }}.</mj-text>
    </mj-column></mj-section>"""
    + "".join(ARTICLE.format(n=n) for n in range(1, 5))
    + """
    <mj-section><mj-column>
      <mj-raw>{% for tip in issue.tips %}</mj-raw>
      <mj-text>Tip: <a href="{{ tip.url }}">{{ tip.title }}</a></mj-text>
      <mj-raw>{% endfor %}</mj-raw>
      <mj-text>Offer: {{ issue.offer | money(issue.currency) }} off until {{ issue.until | date }}.</mj-text>
      <mj-button href="https://shop.example.com/?code={{ issue.code }}">Use {{ issue.code }}</mj-button>
      <mj-text font-size="11px"><a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>
"""
)

CONTEXT: dict[str, Any] = {
    "issue": {
        "month": "March",
        "offer": 10,
        "currency": "EUR",
        "until": "2026-03-31T22:00:00+00:00",
        "code": "SPRING10",
        "tips": [
            {"url": "https://news.example.com/tips/1", "title": "Care for linen"},
            {"url": "https://news.example.com/tips/2", "title": "Oil your desk"},
        ],
    }
}


def contacts(n: int) -> list[dict[str, Any]]:
    locales = [("en_US", "America/New_York"), ("de_DE", "Europe/Berlin"), ("fr_FR", "Europe/Paris")]
    return [
        {
            "id": i,
            "first_name": f"Name{i}",
            "locale": locales[i % 3][0],
            "timezone": locales[i % 3][1],
            "attributes": {"points": i % 1000, "since": "2024-05-01T10:00:00+00:00"},
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="contacts to render")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "email").mkdir()
        (Path(tmp) / "email" / "newsletter.mjml").write_text(NEWSLETTER)
        renderer = Renderer(tmp, Settings(public_url="https://t.example.com"), secret_key="bench")
        people = contacts(args.n)
        first = renderer.render_email(
            "newsletter", contact=people[0], message_id=0, context=CONTEXT
        )
        compiled = renderer.email("newsletter")
        check(renderer, people[1])

        env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
        env.filters.update(FILTERS)
        baseline = env.from_string(compiled.html)
        ours = make_environment(autoescape=True).from_string(compiled.html)
        fixed = {
            "_links": [f"https://t.example.com/t/c/{i}" for i in range(len(compiled.links))],
            "_open_url": "https://t.example.com/t/o/x",
            "_track": lambda index, url: f"https://t.example.com/t/c/{index}",
            "unsubscribe_url": "https://t.example.com/u/x",
            "preheader": first.preheader,
        }
        contexts = [{**CONTEXT, **fixed, "contact": contact_context(c)} for c in people]

        def run_baseline(lo: int, hi: int) -> float:
            start = time.thread_time()
            for values in contexts[lo:hi]:
                baseline.render(values)
            return time.thread_time() - start

        def run_ours(lo: int, hi: int) -> float:
            start = time.thread_time()
            for values in contexts[lo:hi]:
                ours.render(values)
            return time.thread_time() - start

        def run_full(lo: int, hi: int) -> float:
            start = time.thread_time()
            for i in range(lo, hi):
                renderer.render_email(
                    "newsletter", contact=people[i], message_id=i, context=CONTEXT
                )
            return time.thread_time() - start

        run_baseline(0, 500), run_ours(0, 500), run_full(0, 500)  # warm up
        # interleave chunks so load from other processes hits both sides alike
        base_s = ours_s = full_s = 0.0
        for lo in range(0, args.n, 250):
            hi = min(lo + 250, args.n)
            base_s += run_baseline(lo, hi)
            ours_s += run_ours(lo, hi)
            full_s += run_full(lo, hi)

    size = len(NEWSLETTER.encode())
    print(
        f"newsletter: {size} bytes MJML, {len(first.html)} bytes HTML, {len(first.text)} bytes "
        f"text, {len(compiled.links)} tracked links, MJML compiled {renderer.compile_count}x"
    )
    print(
        f"baseline  Jinja sandbox+autoescape, compiled HTML only: {args.n / base_s:8.0f} renders/s"
    )
    print(
        f"full      subject+preheader+HTML+text+tokens+headers:   {args.n / full_s:8.0f} renders/s"
    )
    print(f"reference tidings' environment, compiled HTML only:   {args.n / ours_s:8.0f} renders/s")
    ratio = base_s / full_s
    print(f"ratio full/baseline: {ratio:.2f} (goal >= {GOAL:.2f})")
    print(f"ratio full/tidings' environment, HTML only: {ours_s / full_s:.2f} (for reference)")
    if ratio < GOAL:
        print(f"GOAL MISSED: {ratio:.2f} < {GOAL:.2f}")
        sys.exit(1)


def check(renderer: Renderer, contact: dict[str, Any]) -> None:
    """What one render produced: verifiable tokens, and the played-back text part."""
    email = renderer.render_email("newsletter", contact=contact, message_id=77, context=CONTEXT)
    clicks = re.findall(r"https://t\.example\.com/t/c/([\w.-]+)", email.html)
    tokens = [verify_token(t, secret="bench", kind="c") for t in clicks]
    assert {t.message_id for t in tokens} == {"77"}, tokens
    # 10 links in the template, one of them in the loop over two tips
    assert sorted(t.link_index or 0 for t in tokens) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9]
    (pixel,) = re.findall(r"https://t\.example\.com/t/o/([\w.-]+)", email.html)
    assert verify_token(pixel, secret="bench", kind="o").message_id == "77"
    unsubscribe = email.headers["List-Unsubscribe"][1:-1].rsplit("/", 1)[1]
    assert verify_token(unsubscribe, secret="bench", kind="u").message_id == "77"
    assert renderer.email("newsletter").replay_text is not None
    entry = renderer._email("newsletter")
    replay, entry.replay = entry.replay, None  # the text part the long way, once
    try:
        full = renderer.render_email("newsletter", contact=contact, message_id=77, context=CONTEXT)
    finally:
        entry.replay = replay
    assert email.text == full.text and email.html == full.html, "played-back text differs"
    assert f"Hi {contact['first_name']}," in email.text and "Care for linen (" in email.text


if __name__ == "__main__":
    main()
