"""Render limits: huge ``**`` and ``*`` results, output size and time fail at file:line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.templates.conftest import SECRET, mjml, write_email
from tidings.config import Settings
from tidings.templates.render import Renderer, TemplateRenderError


def renderer_for(root: Path, **limits: Any) -> Renderer:
    settings = Settings(public_url="https://t.example.com", **limits)
    return Renderer(root, settings, secret_key=SECRET)


def write_sms(root: Path, name: str, body: str) -> Path:
    (root / "sms").mkdir(parents=True, exist_ok=True)
    path = root / "sms" / f"{name}.sms.j2"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("expression", "said"),
    [
        ("10**(10**6)", "larger than 100000 bits"),
        ("'x'*10**8", "repeated 100000000 times"),
        ("10**8*'x'", "repeated 100000000 times"),
        ("[1]*10**8", "repeated 100000000 times"),
        ("(2**90000)*(2**90000)", "product larger than"),
    ],
)
def test_huge_results_fail_fast_at_their_line(tmp_path: Path, expression: str, said: str) -> None:
    write_email(
        tmp_path, "t", mjml("<mj-text>Hello</mj-text>\n<mj-text>{{ " + expression + " }}</mj-text>")
    )
    write_sms(tmp_path, "s", "Hi\n{{ " + expression + " }}\n")
    renderer = renderer_for(tmp_path)
    started = time.perf_counter()
    with pytest.raises(TemplateRenderError) as email:
        renderer.render_email("t", contact={}, message_id="m")
    with pytest.raises(TemplateRenderError) as sms:
        renderer.render_sms("s", contact={})
    assert time.perf_counter() - started < 1.0
    assert said in str(email.value) and said in str(sms.value)
    assert email.value.location == f"{tmp_path}/email/t.mjml:6"  # front matter 1-3, <mjml> 4
    assert sms.value.location == f"{tmp_path}/sms/s.sms.j2:2"


def test_reasonable_arithmetic_still_renders(tmp_path: Path) -> None:
    # Jinja's ** is left-associative: 10**10**6 is (10**10)**6, sixty-one digits
    write_sms(tmp_path, "s", "{{ 2**64 }} {{ 'ab'*3 }} {{ [0]*2 }} {{ 1.5**2 }} {{ 1**10**9 }}")
    write_sms(tmp_path, "left", "{{ 10**10**6 }}")
    renderer = renderer_for(tmp_path)
    assert renderer.render_sms("s", contact={}).body == "18446744073709551616 ababab [0, 0] 2.25 1"
    assert renderer.render_sms("left", contact={}).body == str(10**60)


def test_output_is_capped_while_it_is_written(tmp_path: Path) -> None:
    body = "<mj-text>{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}</mj-text>"
    write_email(tmp_path, "t", mjml(body))
    with pytest.raises(TemplateRenderError) as info:
        renderer_for(tmp_path, template_max_output=50_000).render_email(
            "t", contact={}, message_id="m"
        )
    assert "output longer than 50000" in str(info.value)
    assert info.value.location == f"{tmp_path}/email/t.mjml:5"


def test_a_render_that_takes_too_long_is_stopped(tmp_path: Path) -> None:
    write_sms(
        tmp_path,
        "slow",
        "Hi\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
    )
    write_sms(
        tmp_path,
        "fork",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
    )
    renderer = renderer_for(tmp_path, template_timeout=0.2)
    for name in ("slow", "fork"):
        started = time.perf_counter()
        with pytest.raises(TemplateRenderError) as info:
            renderer.render_sms(name, contact={})
        assert time.perf_counter() - started < 2.0, name
        assert "longer than 0.2 s" in str(info.value)
