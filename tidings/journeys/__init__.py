"""Journeys: the YAML language, its loader and validation, and the engine that runs them."""
