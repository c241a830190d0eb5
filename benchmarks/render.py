"""Personalised email renders per second against the plain-Jinja ceiling, same run.

    .venv/bin/python benchmarks/render.py            # 20,000 contacts
    .venv/bin/python benchmarks/render.py -n 5000

Renders a ~5 KB newsletter (MJML with a loop, 12 links, locale filters) for N contacts through
``Renderer.render_email`` (subject, preheader, HTML, text part, signed tracked links, pixel,
List-Unsubscribe headers) and, as the baseline, ``Template.render`` of the same already-compiled
HTML in a ``SandboxedEnvironment(autoescape=True)`` with the same context and the link URLs
precomputed. The ratio is the cost of everything we add per contact beyond Jinja itself.
"""

# ruff: noqa: E501  (the MJML sample keeps its natural line lengths)
from __future__ import annotations

import argparse
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
from tidings.templates.render import Renderer, contact_context  # noqa: E402

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

        env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
        env.filters.update(FILTERS)
        baseline = env.from_string(compiled.html)
        fixed = {
            "_links": [f"https://t.example.com/t/c/{i}" for i in range(len(compiled.links))],
            "_open_url": "https://t.example.com/t/o/x",
            "_track": lambda index, url: f"https://t.example.com/t/c/{index}",
            "unsubscribe_url": "https://t.example.com/u/x",
            "preheader": first.preheader,
        }
        contexts = [{**CONTEXT, **fixed, "contact": contact_context(c)} for c in people]

        def run_baseline(lo: int, hi: int) -> float:
            start = time.perf_counter()
            for values in contexts[lo:hi]:
                baseline.render(values)
            return time.perf_counter() - start

        def run_full(lo: int, hi: int) -> float:
            start = time.perf_counter()
            for i in range(lo, hi):
                renderer.render_email(
                    "newsletter", contact=people[i], message_id=i, context=CONTEXT
                )
            return time.perf_counter() - start

        run_baseline(0, 500), run_full(0, 500)  # warm up
        # interleave chunks so load from other processes hits both sides alike
        base_s = full_s = 0.0
        for lo in range(0, args.n, 500):
            hi = min(lo + 500, args.n)
            base_s += run_baseline(lo, hi)
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
    print(f"ratio full/baseline: {base_s / full_s:.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()
