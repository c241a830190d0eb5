"""Prefect, as tidings uses it: where the server is, and quiet defaults for an offline machine.

>>> prefect_server_url()          # doctest: +SKIP
'http://127.0.0.1:4200/api'

``tidings journey run`` asks :func:`prefect_server_url` whether a Prefect server is configured
(``PREFECT_API_URL`` in the environment or the active Prefect profile): with one, the journey runs
as a flow run on it; without one, in the same process, because a temporary server costs 10-30 s
per call. :func:`quiet_defaults` switches off what needs the internet (telemetry) unless the
user chose otherwise; it runs before prefect is imported.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Anonymous usage telemetry: offline it logs "Failed to send telemetry" on every run.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A temporary server on a loaded machine may need longer than the 20 s default to start.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def quiet_defaults() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def prefect_server_url() -> str | None:
    """The API URL of the configured Prefect server, or None (a temporary one would start)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None
