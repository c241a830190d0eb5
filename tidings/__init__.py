"""tidings: a marketing automation and campaign engine."""

__version__ = "0.1.0"
