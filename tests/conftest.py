"""Shared fixtures: real SQLite and PostgreSQL stores, real Redis.

``store`` is parametrized over both databases, so a test that takes it runs on each. Outside CI
a missing PostgreSQL or Redis skips the test with what to start; in CI (``CI`` or
``TIDINGS_REQUIRE_SERVICES`` set) it fails, so a green run always means both were exercised.

PostgreSQL: the schema is migrated once per session into a template database; each test gets a
fresh ``CREATE DATABASE ... TEMPLATE`` copy (tens of milliseconds) and it is dropped afterwards.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

# Engine tests run on a fixture project of their own, never on the example content at the top
# of the repository (a marketer editing welcome.mjml must not break them); set before anything
# reads the settings. tests/test_project.py validates the example project on its own.
FIXTURE_PROJECT = Path(__file__).resolve().parent / "fixtures" / "project"
os.environ["TIDINGS_PROJECT_DIR"] = str(FIXTURE_PROJECT)

from tidings.crm.db import make_engine, upgrade  # noqa: E402

PG_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = bool(os.environ.get("CI") or os.environ.get("TIDINGS_REQUIRE_SERVICES"))
START_HINT = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


def service_missing(name: str, error: Exception) -> None:
    message = (
        f"{name} is not reachable ({error.__class__.__name__}: {error}); start it: "
        + (START_HINT[name])
    )
    if REQUIRE_SERVICES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_BUSY = threading.Lock()  # held while a background thread creates or drops a database


@contextmanager
def background_paused() -> Iterator[None]:
    """No test database is created or dropped in the background meanwhile: for a test that
    measures the process's memory (tracemalloc counts the allocations of every thread)."""
    with _BUSY:
        yield


class PostgresServer:
    """Creates throwaway databases from a migrated template on the test server.

    A database costs PostgreSQL about half a second to create and as much to drop, mostly
    waiting on the disk; a thread keeps ``AHEAD`` copies ready and another drops used ones, so
    the tests do not wait for either. Each test still gets a database nobody used before."""

    AHEAD = 2

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.template = f"tidings_tpl_{uuid.uuid4().hex[:8]}"
        self.ready: queue.Queue[str | BaseException] = queue.Queue(maxsize=self.AHEAD)
        self.doomed: queue.Queue[str | None] = queue.Queue()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def _url(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def start(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.template}"'))
        engine = make_engine(self._url(self.template))
        upgrade(engine)
        engine.dispose()
        for target in (self._fill, self._drop_doomed):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _create(self, prefix: str, template: str | None) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
        return name

    def _fill(self) -> None:
        while not self.stopping.is_set():
            try:
                with _BUSY:
                    made: str | BaseException = self._create("tidings_t", self.template)
            except Exception as error:
                made = error
            self.ready.put(made)

    def _drop_doomed(self) -> None:
        while (name := self.doomed.get()) is not None:
            with _BUSY:
                self._drop_now(name)

    def new_database(self) -> str:
        made = self.ready.get(timeout=300)
        if isinstance(made, BaseException):
            raise made
        return self._url(made)

    def empty_database(self) -> str:
        return self._url(self._create("tidings_e", None))

    def drop(self, name_or_url: str) -> None:
        """Drop a database later, on the dropping thread (its connections are closed)."""
        self.doomed.put(make_url(name_or_url).database if "://" in name_or_url else name_or_url)

    def _drop_now(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        self.stopping.set()
        leftover: list[str] = []
        filler = self.threads[0]
        while filler.is_alive() or not self.ready.empty():
            try:  # taking one unblocks the filler, which may be waiting to hand it over
                made = self.ready.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(made, str):
                leftover.append(made)
        self.doomed.put(None)
        for thread in self.threads:
            thread.join()
        for name in [*leftover, self.template]:
            self._drop_now(name)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(PG_URL)
    try:
        server.start()
    except Exception as error:
        service_missing("PostgreSQL", error)
    yield server
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tidings.db'}"


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.new_database()
    yield url
    postgres_server.drop(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite store, copied for each test (migrating it takes a quarter second)."""
    path = tmp_path_factory.mktemp("template") / "tidings.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    assert not path.with_name("tidings.db-wal").exists(), "the template must be one file"
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a freshly migrated store, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        shutil.copyfile(request.getfixturevalue("sqlite_template"), str(make_url(url).database))
        return url
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    """An engine on a freshly migrated store (SQLite and PostgreSQL)."""
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as error:
        service_missing("Redis", error)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()
