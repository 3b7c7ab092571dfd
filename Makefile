# The two commands: `make run` (the platform, locally) and `make test` (every check CI runs).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp
IAC_VENV := .venv-iac
IAC_STAMP := $(IAC_VENV)/.installed-stamp
AUDIT_VENV := .venv-audit
AUDIT_STAMP := $(AUDIT_VENV)/.installed-stamp

.PHONY: help setup run test lint typecheck format unit integration e2e openapi clean iac audit

help:
	@echo "make run    - install what is missing, start Postgres, Azurite and the devhost on :7071"
	@echo "make test   - lint, type-check, intent_ref check and the whole test suite"
	@echo "make lint   - intent_ref check, ruff and mypy only"
	@echo "make audit  - known vulnerabilities in the pinned Python and npm dependencies (part of make test)"

setup: $(VENV_STAMP) $(NODE_STAMP)

# Reinstall only when a requirements file changed, so a second `make run` starts at once.
$(VENV_STAMP): requirements.txt requirements-dev.txt clients/python/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# The client package and its `qp` command, from this checkout (its dependencies are pinned above).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e clients/python
	@touch $@

# checkov lives in its own venv: its ~100 dependencies must not meet the app's.
$(IAC_STAMP): requirements-iac.txt
	@test -x $(IAC_VENV)/bin/python || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-iac.txt
	@touch $@

# pip-audit lives in its own venv too: the auditor's dependencies must not meet what it audits.
$(AUDIT_STAMP): requirements-audit.txt
	@test -x $(AUDIT_VENV)/bin/python || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-audit.txt
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

local.settings.json:
	cp local.settings.sample.json local.settings.json

run: setup local.settings.json
	$(PY) -m devhost run --seed-demo

lint: setup
	$(PY) tools/check_intent_refs.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite in TEST_WORKERS processes (a test file to each at a time, its module fixtures whole): most of its time is
# spent waiting on devhosts, timers and leases, so two processes on two cores take about two thirds of the time.
TEST_WORKERS ?= 2

test: lint iac audit
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

iac: $(IAC_STAMP)
	tools/iac_check.sh

# Known-vulnerable pins fail; accepted ones are listed in security/accepted-vulnerabilities.toml. A source that does
# not answer is reported as NOT AUDITED without failing (QP_AUDIT_REQUIRE_SOURCES=1 makes it fail).
audit: setup $(AUDIT_STAMP)
	$(PY) tools/dependency_audit.py

unit: setup
	$(VENV)/bin/pytest tests/unit

integration: setup
	$(VENV)/bin/pytest tests/integration

e2e: setup
	$(VENV)/bin/pytest tests/e2e

openapi: setup
	$(PY) tools/export_openapi.py

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache

# The benchmarks' peer (bench/peer.py) lives in its own venv: its dependencies move pins of requirements-dev.txt.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
.PHONY: bench-env
bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): requirements-bench.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	@touch $@
