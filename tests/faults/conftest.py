from __future__ import annotations

from tests.simulators.fixtures import sendgrid_sim, smtp_sim, twilio_sim

__all__ = ["sendgrid_sim", "smtp_sim", "twilio_sim"]
