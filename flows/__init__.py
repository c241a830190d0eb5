"""Prefect flows: thin wiring over the engine (journeys, scores)."""
