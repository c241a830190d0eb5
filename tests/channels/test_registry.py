"""The channel registry: every name builds its adapter from settings, from its own module."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tidings.channels import CHANNELS, REGISTRY, get_channel
from tidings.channels.outbox import OutboxChannel
from tidings.config import Settings
from tidings.errors import ConfigurationError


def test_every_registered_name_builds_its_adapter_from_its_own_module(tmp_path: Path) -> None:
    settings = Settings(
        outbox_dir=str(tmp_path / "out"),
        sendgrid_api_key="SG.test",
        twilio_account_sid="ACtest",
        twilio_auth_token="token",
        twilio_from_number="+15005550006",
    )
    assert CHANNELS == tuple(REGISTRY) == ("sendgrid", "smtp", "twilio", "outbox")
    for name in REGISTRY:
        adapter = get_channel(name, settings)
        try:
            assert type(adapter).__module__ == f"tidings.channels.{name}"
            assert adapter.provider == name
        finally:
            adapter.close()


def test_an_unknown_name_lists_the_registry_and_a_new_entry_is_all_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Pigeon(OutboxChannel):
        provider = "pigeon"

        @classmethod
        def from_settings(cls, settings: Any, **overrides: Any) -> Pigeon:
            return cls(folder=tmp_path / "coop", **overrides)

    monkeypatch.setattr(sys.modules[__name__], "Pigeon", Pigeon, raising=False)
    monkeypatch.setitem(REGISTRY, "pigeon", f"{__name__}:Pigeon")

    assert isinstance(get_channel("pigeon", Settings()), Pigeon)
    with pytest.raises(ConfigurationError) as raised:
        get_channel("carrier", Settings())
    assert str(raised.value) == (
        "unknown channel 'carrier'; choose one of sendgrid, smtp, twilio, outbox, pigeon"
    )
