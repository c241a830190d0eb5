"""Reproducible performance runs (see README.md here); each prints ratios against a baseline."""
