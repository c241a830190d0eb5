"""The journey report as one self-contained HTML page: tables and inline SVG charts.

Charts are Altair (Vega-Lite) specs rendered to SVG by ``vl-convert-python`` in-process, so
the page needs no JavaScript, no network and no CDN: it works offline, from a file or from
``tidings serve`` (``/reports/journeys/{name}``, behind an API key). Four charts:

``funnel``       sent -> delivered -> human opens -> clicks -> conversions (whole journey)
``variants``     open, click and conversion rate per step and variant, with Wilson intervals,
                 and the conversion rate per arm (holdout and control group included)
``attribution``  attributed revenue per model, stacked by step (``tidings attribution run``)
``revenue``      conversions' revenue per day and arm

Each chart sits in ``<figure class="chart" data-chart="NAME">``; a chart without data says so
in words instead (``data-empty="true"``).

>>> page = render_html(journey_report(conn, "welcome"))          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from tidings.analytics.report import ALL, COUNTS, NO_VARIANT, JourneyReport, StepRow

FUNNEL = (
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("human_opens", "opened (human)"),
    ("clicks", "clicked"),
    ("conversions", "converted"),
)
RATES = (("human_opens", "open rate"), ("clicks", "click rate"), ("conversions", "conversion"))


def _svg(spec: dict[str, Any]) -> Markup:
    import vl_convert as vlc

    return Markup(vlc.vegalite_to_svg(spec))  # vl-convert output: no user markup


def _label(row: StepRow) -> str:
    return row.step if row.variant in (ALL, NO_VARIANT) else f"{row.step} / {row.variant}"


def chart_specs(report: JourneyReport) -> dict[str, dict[str, Any] | None]:
    """The Vega-Lite spec of each chart (None when there is nothing to draw yet)."""
    import altair as alt

    total = report.total
    funnel = [
        {"stage": label, "n": int(getattr(total, key)), "order": i}
        for i, (key, label) in enumerate(FUNNEL)
    ]
    specs: dict[str, dict[str, Any] | None] = {}
    specs["funnel"] = (
        alt.Chart({"values": funnel}, title="Funnel, whole journey")
        .mark_bar()
        .encode(
            x=alt.X("n:Q", title="messages"),
            y=alt.Y("stage:N", sort=alt.SortField("order"), title=None),
            tooltip=["stage:N", "n:Q"],
        )
        .properties(width=420)
        .to_dict()
        if total.sent
        else None
    )
    rates = []
    for row in report.steps:
        if row.variant == ALL or not row.sent:
            continue
        for key, name in RATES:
            r = row.rate(key)
            rates.append(
                {
                    "group": _label(row),
                    "metric": name,
                    "rate": r.value,
                    "low": r.low,
                    "high": r.high,
                }
            )
    for arm in report.arms:
        r = arm.conversion_rate
        if arm.enrolled:
            rates.append(
                {
                    "group": f"arm {arm.name}",
                    "metric": "conversion per enrollment",
                    "rate": r.value,
                    "low": r.low,
                    "high": r.high,
                }
            )
    if rates:
        base = alt.Chart({"values": rates})
        y = alt.Y("group:N", title=None)
        interval = base.mark_rule(strokeWidth=2).encode(
            x=alt.X("low:Q", title="rate (95% Wilson interval)", axis=alt.Axis(format="%")),
            x2="high:Q",
            y=y,
            color=alt.Color("metric:N"),
        )
        point = base.mark_point(filled=True, size=60).encode(
            x="rate:Q", y=y, color="metric:N", tooltip=["group:N", "metric:N", "rate:Q"]
        )
        specs["variants"] = (
            alt.layer(interval, point, title="Rates per step and variant")
            .facet(row=alt.Row("metric:N", title=None))
            .resolve_scale(x="independent")
            .to_dict()
        )
    else:
        specs["variants"] = None
    attribution = [
        {"model": a.model, "step": a.step, "value": float(a.value)} for a in report.attribution
    ]
    specs["attribution"] = (
        alt.Chart({"values": attribution}, title="Attributed revenue by model")
        .mark_bar()
        .encode(
            x=alt.X("sum(value):Q", title="revenue"),
            y=alt.Y("model:N", title=None),
            color=alt.Color("step:N"),
            tooltip=["model:N", "step:N", "value:Q"],
        )
        .properties(width=420)
        .to_dict()
        if attribution
        else None
    )
    days = [
        {"day": d.day, "arm": d.arm, "revenue": float(d.revenue), "conversions": d.conversions}
        for d in report.revenue_by_day
    ]
    specs["revenue"] = (
        alt.Chart({"values": days}, title="Revenue per day")
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title=None),
            y=alt.Y("revenue:Q", title="revenue"),
            color=alt.Color("arm:N"),
            tooltip=["day:T", "arm:N", "revenue:Q", "conversions:Q"],
        )
        .properties(width=420)
        .to_dict()
        if days
        else None
    )
    return specs


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tidings: journey {{ r.journey }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
td,th{padding:.25rem .5rem;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
.ci{color:#777;font-size:12px}figure.chart{margin:1.5rem 0}tr.total td{font-weight:600}
</style></head><body>
<h1>Journey {{ r.journey }}</h1>
<p>{{ r.versions }} version(s); generated {{ r.generated_at.isoformat(timespec="seconds") }}.
Rates are over messages sent, with 95% Wilson intervals; opens and clicks count messages with
at least one human (not machine) open or click. Conversions are credited to the step of their
last touch.{% if r.experiments %} Experiments: {{ r.experiments | join(", ") }}.{% endif %}</p>
{% for name, svg in charts %}
<figure class="chart" data-chart="{{ name }}"{% if not svg %} data-empty="true"{% endif %}>
{% if svg %}{{ svg }}{% else %}<figcaption>{{ name }}: no data yet</figcaption>{% endif %}
</figure>
{% endfor %}
<h2>Per step and variant</h2>
<table id="steps"><thead><tr><th>step</th><th>variant</th>
{% for c in counts %}<th>{{ c }}</th>{% endfor %}<th>revenue</th></tr></thead><tbody>
{% for row in rows %}<tr{% if row.variant == "*" %} class="total"{% endif %}>
<td>{{ row.step }}</td><td>{{ row.variant }}</td>
{% for c in counts %}<td>{{ "{:,}".format(row[c]) }}{% if c != "sent" %}
<br><span class="ci">{{ pct(row.rate(c).value) }} [{{ pct(row.rate(c).low) }},
{{ pct(row.rate(c).high) }}]</span>{% endif %}</td>{% endfor %}
<td>{{ row.revenue }}</td></tr>{% endfor %}
</tbody></table>
<h2>Arms (enrollments)</h2>
<table id="arms"><thead><tr><th>arm</th><th>enrolled</th><th>conversions</th><th>rate</th>
<th>revenue</th><th>per enrollment</th></tr></thead><tbody>
{% for a in r.arms %}<tr><td>{{ a.name }}</td><td>{{ "{:,}".format(a.enrolled) }}</td>
<td>{{ a.conversions }}</td><td>{{ pct(a.conversion_rate.value) }}
<span class="ci">[{{ pct(a.conversion_rate.low) }}, {{ pct(a.conversion_rate.high) }}]</span></td>
<td>{{ a.revenue }}</td><td>{{ "%.2f" | format(a.revenue_per_enrollment) }}</td></tr>{% endfor %}
</tbody></table>
{% if r.lifts %}<h2>Incremental lift</h2><table id="lift"><thead><tr><th>against</th>
<th>treated</th><th>conversion rate</th><th>revenue per contact</th></tr></thead><tbody>
{% for l in r.lifts %}<tr><td>{{ l.baseline }}</td><td>{{ l.treated }}</td>
<td>{{ pp(l.lift.conversion.effect) }} <span class="ci">[{{ pp(l.lift.conversion.ci_low) }},
{{ pp(l.lift.conversion.ci_high) }}], p={{ "%.3g" | format(l.lift.conversion.p_value) }}</span></td>
<td>{% if l.lift.revenue %}{{ "%+.2f" | format(l.lift.revenue.effect) }}
<span class="ci">[{{ "%+.2f" | format(l.lift.revenue.ci_low) }},
{{ "%+.2f" | format(l.lift.revenue.ci_high) }}]</span>{% else %}-{% endif %}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if r.attribution %}<h2>Attribution</h2><table id="attribution"><thead><tr><th>model</th>
<th>step</th><th>conversions</th><th>weight</th><th>revenue</th></tr></thead><tbody>
{% for a in r.attribution %}<tr><td>{{ a.model }}</td><td>{{ a.step }}</td>
<td>{{ a.conversions }}</td><td>{{ "%.2f" | format(a.weight) }}</td><td>{{ a.value }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
</body></html>
"""


def render_html(report: JourneyReport) -> str:
    """The whole page, charts inline."""
    specs = chart_specs(report)
    charts = [(name, _svg(spec) if spec else None) for name, spec in specs.items()]
    env = Environment(autoescape=True)
    rows = [*report.steps, report.total]

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    def pp(v: float) -> str:
        return f"{100 * v:+.2f} pp"

    return env.from_string(PAGE).render(
        r=report,
        charts=charts,
        counts=COUNTS,
        rows=[_Row(x) for x in rows],
        pct=pct,
        pp=pp,
    )


class _Row:
    """A step row that Jinja can index by count name."""

    def __init__(self, row: StepRow) -> None:
        self.row = row
        self.step, self.variant, self.revenue = row.step, row.variant, row.revenue

    def __getitem__(self, name: str) -> int:
        return int(getattr(self.row, name))

    def rate(self, name: str) -> Any:
        return self.row.rate(name)
