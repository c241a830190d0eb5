"""Scores from orders and events (scikit-learn): RFM clusters, churn risk and CLV.

``features`` (as of a cut-off, no leakage) -> ``rfm`` and ``models`` (trained with a time split)
-> ``scoring`` (written onto contacts, usable in segment rules as ``score:`` leaves).
"""
