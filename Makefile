# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing
# and install the pinned set (requirements.lock) into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TIDINGS := $(VENV)/bin/tidings
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint format lock docs clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# The demo runs in the example project (this folder): its store is ./tidings.db, its sandbox
# outbox ./outbox, so the README's next commands work as typed afterwards.
demo: $(STAMP)
	@rm -rf tidings.db outbox models welcome-report.html
	$(TIDINGS) demo

# `make test` is the suite but its few minutes-long tests (marked slow: kill -9 during a 100k
# broadcast, SMTP kill -9, a real Prefect server); `make test-slow` runs those. CI runs both.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate the README's configuration table from tidings/config.py.
docs: $(STAMP)
	$(PY) -m tidings.config README.md

# Refresh the pinned set after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) tidings.db outbox models .mypy_cache .ruff_cache .pytest_cache
