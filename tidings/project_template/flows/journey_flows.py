"""This project's journey flows (entrypoints named in prefect.yaml); the work is in tidings.

prefect deploy --all      # journey-tick every minute, broadcast, journey-event
"""

from tidings.flows.journeys import broadcast, broadcast_share, journey_event, journey_tick

__all__ = ["broadcast", "broadcast_share", "journey_event", "journey_tick"]
