"""This project's event-ingest flow (entrypoint named in prefect.yaml): the Redis buffer."""

from tidings.flows.ingest import ingest_flow

__all__ = ["ingest_flow"]
