"""The examples in the engine's docstrings (``>>>``) run as written, so they stay true.

Collected here rather than with pytest's ``--doctest-modules``, which would also import every
file under tests/ as a module: the fixture project's flows/*.py among them, which would then
shadow Prefect's view of a project's flows (tests/test_project.py)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tidings

#: Modules that only run inside another program: ``python -m tidings``, Alembic's environment,
#: and the starter project's flows (Prefect imports them from a project folder).
LEFT_OUT = ("tidings.__main__", "tidings.crm.migrations", "tidings.project_template")

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(tidings.__path__, "tidings.")
    if not info.name.startswith(LEFT_OUT)
)


#: Modules whose examples are their usage documentation: each must keep some.
DOCUMENTED = (
    "tidings.analytics.attribution",
    "tidings.analytics.bayes",
    "tidings.analytics.decision",
    "tidings.analytics.engagement",
    "tidings.analytics.report",
    "tidings.analytics.sequential",
    "tidings.analytics.stats",
    "tidings.channels.mime",
    "tidings.cli.reports",
    "tidings.crm.importer",
    "tidings.segments.compile",
)


def examples(name: str) -> int:
    module = importlib.import_module(name)
    return sum(len(test.examples) for test in doctest.DocTestFinder().find(module, name))


def test_the_examples_are_found() -> None:
    """A walk that found no module, or a finder that found no example, would pass unseen."""
    assert set(DOCUMENTED) <= set(MODULES)
    assert all(examples(name) > 0 for name in DOCUMENTED)
    assert sum(examples(name) for name in MODULES) > 200  # 287 on 2026-11-30


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
