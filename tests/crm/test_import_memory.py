"""Import streams: peak memory does not grow with the size of the file."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from tests.conftest import background_paused
from tidings.config import Settings
from tidings.crm.db import make_engine, upgrade
from tidings.crm.importer import import_contacts


def write_contacts(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("external_id,email,phone,first_name,timezone,consent_email,plan,score\n")
        for n in range(rows):
            handle.write(
                f"X{n},person{n}@example.com,+1415555{n % 10000:04d},Pat,Europe/Berlin,yes,"
                f"pro,{n % 97}\n"
            )


def _peak(tmp_path: Path, rows: int) -> int:
    path = tmp_path / f"contacts_{rows}.csv"
    write_contacts(path, rows)
    engine = make_engine(f"sqlite:///{tmp_path / f'{rows}.db'}")
    upgrade(engine)
    settings = Settings(import_batch_size=500)
    import_contacts(path, engine=engine, settings=settings)  # warm caches (SQL compilation)
    with background_paused():
        tracemalloc.start()
        report = import_contacts(path, engine=engine, settings=settings)  # unchanged re-import
        path.write_text("")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    engine.dispose()
    assert report.unchanged == rows
    return peak


def test_memory_is_flat_as_the_file_grows(tmp_path: Path) -> None:
    small, large = _peak(tmp_path, 2_000), _peak(tmp_path, 8_000)
    assert large < small * 1.5, f"peak {large} bytes for 8,000 rows vs {small} for 2,000"
