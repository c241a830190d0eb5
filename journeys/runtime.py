"""Everything a worker needs to run journeys, built once from the settings.

>>> runtime = Runtime.from_settings()        # doctest: +SKIP
>>> runtime.load_journeys()                   # registers journeys/*.yaml, checks references
>>> runtime.engine.tick("welcome")           # doctest: +SKIP
>>> runtime.dispatcher.dispatch()            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from journeys import schema as s
from journeys.dispatch import Dispatcher
from journeys.engine import JourneyEngine, Version
from journeys.loader import DEFAULT_DIR, References, journey_files, load_file
from tidings.config import Settings, get_settings


def references(renderer: Any, segment_names: set[str]) -> References:
    def exists(name: str, channel: str) -> bool:
        path = renderer.email_path(name) if channel == "email" else renderer.sms_path(name)
        return bool(path.is_file())

    return References(template_exists=exists, segments=segment_names)


@dataclass
class Runtime:
    db: Engine
    settings: Settings
    engine: JourneyEngine
    dispatcher: Dispatcher
    renderer: Any
    journeys: dict[str, Version] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        db: Engine | None = None,
        channels: dict[str, Any] | None = None,
    ) -> Runtime:
        from channels import get_channel
        from crm.db import make_engine
        from segments.loader import DEFAULT_DIR as SEGMENTS_DIR
        from segments.loader import load_catalog
        from templates.render import Renderer

        settings = settings or get_settings()
        db = db or make_engine(settings.database_url)
        renderer = Renderer(settings=settings)
        if channels is None:
            email = get_channel(settings.email_channel, settings)
            sms = (
                email
                if settings.sms_channel == settings.email_channel
                else get_channel(settings.sms_channel, settings)
            )
            channels = {"email": email, "sms": sms}
        engine = JourneyEngine(db=db, settings=settings, catalog=load_catalog(SEGMENTS_DIR))
        dispatcher = Dispatcher(db=db, renderer=renderer, channels=channels, settings=settings)
        return cls(db, settings, engine, dispatcher, renderer)

    def references(self) -> References:
        return references(self.renderer, set(self.engine.catalog.segments))

    def load(self, path: Path) -> Version:
        """Validate a journey file against the templates and segments, and register it."""
        journey: s.Journey = load_file(path, references=self.references())
        version = self.engine.register(journey)
        self.journeys[version.name] = version
        return version

    def load_journeys(self, directory: Path = DEFAULT_DIR) -> list[Version]:
        return [self.load(path) for path in journey_files(directory)]
