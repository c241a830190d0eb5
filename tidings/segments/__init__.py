"""Segments: YAML rules (``rules``) rewritten into a small core (``core``), compiled to one SQL
statement (``compile``), loaded with precise errors (``loader``), materialised (``membership``).
See docs/segments.md."""
