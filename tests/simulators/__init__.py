"""Provider simulators: real HTTP and SMTP servers on loopback that record what they receive.

Importable by any test: ``from tests.simulators.sendgrid import SendGridSimulator``. The
pytest fixtures in ``tests.simulators.fixtures`` start one per test.
"""
