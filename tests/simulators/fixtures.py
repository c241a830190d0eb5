"""Pytest fixtures that start a simulator per test (import them into a conftest).

>>> from tests.simulators.fixtures import sendgrid_sim, twilio_sim, smtp_sim  # in conftest.py
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.simulators.sendgrid import SendGridSimulator
from tests.simulators.smtp import SmtpSimulator
from tests.simulators.twilio import TwilioSimulator


@pytest.fixture
def sendgrid_sim() -> Iterator[SendGridSimulator]:
    with SendGridSimulator(api_key="SG.test-key") as sim:
        yield sim


@pytest.fixture
def twilio_sim() -> Iterator[TwilioSimulator]:
    with TwilioSimulator() as sim:
        yield sim


@pytest.fixture
def smtp_sim() -> Iterator[SmtpSimulator]:
    with SmtpSimulator() as sim:
        yield sim
