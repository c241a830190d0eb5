"""Everything a worker needs to run journeys, built once from the settings.

Its journeys come from the project's journeys/*.yaml (``load_journeys``).

>>> runtime = Runtime.from_settings()        # doctest: +SKIP
>>> runtime.load_journeys()                   # doctest: +SKIP
>>> runtime.engine.tick("welcome")           # doctest: +SKIP
>>> runtime.dispatcher.dispatch()            # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from tidings.config import Settings, get_settings
from tidings.errors import InputError
from tidings.journeys import schema as s
from tidings.journeys.dispatch import Dispatcher
from tidings.journeys.engine import JourneyEngine, Version
from tidings.journeys.loader import References, journey_files, journey_steps, load_file

log = logging.getLogger(__name__)


def references(
    renderer: Any,
    segment_names: set[str],
    journeys: dict[str, list[str]] | None = None,
    topics: Any = None,
) -> References:
    def exists(name: str, channel: str) -> bool:
        if "." in name:  # welcome.de is a locale variant: a journey names the template
            return False
        path = renderer.email_path(name) if channel == "email" else renderer.sms_path(name)
        return bool(path.is_file())

    return References(
        template_exists=exists, segments=segment_names, journeys=journeys, topics=topics
    )


@dataclass
class Runtime:
    db: Engine
    settings: Settings
    engine: JourneyEngine
    renderer: Any
    channels: Mapping[str, Any] | None = None  # None: the settings' channels, on first send
    journeys: dict[str, Version] = field(default_factory=dict)
    problems: list[InputError] = field(default_factory=list)
    project_steps: dict[str, list[str]] | None = None  # the project's journeys, once loaded

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        db: Engine | None = None,
        channels: Mapping[str, Any] | None = None,
    ) -> Runtime:
        from tidings.crm.db import make_engine
        from tidings.segments.loader import load_catalog
        from tidings.templates.render import Renderer

        settings = settings or get_settings()
        db = db or make_engine(settings.database_url)
        renderer = Renderer(settings=settings)
        engine = JourneyEngine(
            db=db, settings=settings, catalog=load_catalog(settings.segments_dir, strict=False)
        )
        return cls(db, settings, engine, renderer, channels)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        """Built, with its channels, on first use: a read-only command (status, plan, pause)
        never needs a provider's credentials; a sending one fails here, before any claim."""
        from tidings.channels import build_channels

        channels = self.channels if self.channels is not None else build_channels(self.settings)
        return Dispatcher(
            db=self.db, renderer=self.renderer, channels=channels, settings=self.settings
        )

    def references(self) -> References:
        from tidings.crm.topics import load_topics

        return references(
            self.renderer,
            set(self.engine.catalog.segments),
            self.project_steps,
            load_topics(self.settings.project_dir),
        )

    def load(self, path: Path) -> Version:
        """Validate a journey file against the templates and segments, and register it."""
        journey: s.Journey = load_file(path, references=self.references())
        version = self.engine.register(journey)
        self.journeys[version.name] = version
        return version

    def load_journeys(self, directory: Path | None = None) -> list[Version]:
        """Register every journey of the project; one that fails to load is reported and skipped.

        Its problems are kept in ``problems`` (and logged), so one typo in one file does not
        stop the tick or transactional sends of every other journey. ``journey validate`` is
        the strict check for CI.
        """
        loaded = []
        self.problems = list(self.engine.catalog.problems)
        paths = journey_files(directory or self.settings.journeys_dir)
        self.project_steps = journey_steps(paths)
        for path in paths:
            try:
                loaded.append(self.load(path))
            except InputError as exc:
                self.problems.append(exc)
        for problem in self.problems:
            log.error("skipped: %s", problem)
        return loaded
