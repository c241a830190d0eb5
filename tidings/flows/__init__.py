"""Prefect flows: thin wiring over the engine (journeys, scores, event ingest).

A project's ``flows/*.py`` entrypoints import these; ``prefect.yaml`` names the entrypoints.
Importing this package applies :func:`tidings.flows.prefect_env.quiet_defaults` before prefect
itself is imported.
"""

from tidings.flows.prefect_env import quiet_defaults

quiet_defaults()
