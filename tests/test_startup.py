"""What a command imports before it does its work.

``tidings contacts import`` of ten rows, a worker's start and a transactional send should not
wait for the experiment statistics (numpy and scipy, over a second) or alembic (~0.4 s) when
they do not use them: each is imported where it is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("scipy", "numpy", "alembic", "sklearn")


@pytest.mark.parametrize(
    "module",
    [
        "tidings.crm.importer",  # every file import
        "tidings.journeys.runtime",  # workers, the web app, imports that move live segments
        "tidings.segments.live",
        "tidings.analytics",  # the package's names resolve on first use
    ],
)
def test_a_command_path_does_not_import_what_it_does_not_use(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"


def test_the_analytics_names_still_resolve() -> None:
    import tidings.analytics as analytics

    assert analytics.decide.__module__ == "tidings.analytics.decision"
    assert analytics.z_test.__module__ == "tidings.analytics.stats"
    assert set(analytics.__all__) <= set(dir(analytics)) | set(analytics._MODULES)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        analytics.nope  # noqa: B018
