"""This project's score flow (entrypoint named in prefect.yaml): churn risk, CLV, RFM."""

from tidings.flows.scores import train_and_score

__all__ = ["train_and_score"]
