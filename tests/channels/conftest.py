"""Fixtures for the channel tests: simulators per test, outbox rows in a real store."""

from __future__ import annotations

from tests.simulators.fixtures import sendgrid_sim, smtp_sim, twilio_sim

__all__ = ["sendgrid_sim", "smtp_sim", "twilio_sim"]
