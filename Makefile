# Neocloud: `make run` for the embedded demo, `make test` for the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PG_HOST ?= 127.0.0.1
PG_PORT ?= 5432
PG_SUPERUSER_URL ?= postgresql://postgres@$(PG_HOST):$(PG_PORT)/postgres
TEST_DB ?= neocloud_test
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15
PYTEST_ARGS ?=
# Each pass prints its 15 slowest tests, so `make test` shows where the time goes.
DURATIONS := --durations=15 --durations-min=0

.PHONY: run test test-quick screenshot-run install install-test system-packages browser sandbox pg-roles test-postgres test-embedded screenshot gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements-opa.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --ignore-requires-python -r requirements-opa.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install sandbox
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py platform_keys init
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py seed_demo_workflows
	$(BIN)/python scripts/devserver.py

# Debian packages: chromium for the browser tests (Playwright drives it; it downloads no
# browser) and bubblewrap, the sandbox runners execute steps in (docs/operators.md, "Workers").
DEBIAN_PACKAGES := chromium:chromium bwrap:bubblewrap

system-packages:
	@missing=""; for pair in $(DEBIAN_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian's$$missing..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	  || echo "Could not install$$missing: install these Debian packages (browser tests and runs need them)."; fi

browser sandbox: system-packages

pg-roles: install
	$(BIN)/python scripts/pg_roles.py "$(PG_SUPERUSER_URL)"

# Every test once, on PostgreSQL (as the non-owner app role) and Redis, with a real worker.
test-postgres: install-test browser sandbox pg-roles
	DATABASE_URL=postgresql://neocloud_app@$(PG_HOST):$(PG_PORT)/$(TEST_DB) \
	OWNER_DATABASE_URL=postgresql://neocloud_owner@$(PG_HOST):$(PG_PORT)/$(TEST_DB) \
	PLATFORM_DATABASE_URL=postgresql://neocloud_platform@$(PG_HOST):$(PG_PORT)/$(TEST_DB) \
	PG_ADMIN_URL=postgresql://neocloud_owner@$(PG_HOST):$(PG_PORT)/postgres PG_SUPERUSER_URL=$(PG_SUPERUSER_URL) \
	CELERY_BROKER_URL=$(REDIS_TEST_URL) \
	NEOCLOUD_DATA_DIR=$(CURDIR)/var/$(TEST_DB)-postgres NEOCLOUD_TEST_STACK=postgres NEOCLOUD_FAST_PASSWORD_HASHER=1 \
	$(BIN)/pytest $(DURATIONS) $(PYTEST_ARGS)

EMBEDDED_ENV = DATABASE_URL=sqlite:///$(CURDIR)/var/$(TEST_DB)-embedded/$(TEST_DB).sqlite3 \
	CELERY_BROKER_URL=filesystem:// \
	NEOCLOUD_DATA_DIR=$(CURDIR)/var/$(TEST_DB)-embedded NEOCLOUD_TEST_STACK=embedded NEOCLOUD_FAST_PASSWORD_HASHER=1
EMBEDDED_COVERAGE := $(CURDIR)/var/$(TEST_DB)-coverage/embedded

# The tests marked `embedded` (what differs between the stacks, and a smoke slice of each app)
# on a file-backed SQLite database and the filesystem broker, under coverage; then the check
# that they ran every vendor branch, select_for_update and raw SQL statement SQLite runs.
test-embedded: install-test browser sandbox
	rm -rf $(CURDIR)/var/$(TEST_DB)-embedded $(dir $(EMBEDDED_COVERAGE))
	mkdir -p $(dir $(EMBEDDED_COVERAGE))
	$(EMBEDDED_ENV) COVERAGE_FILE=$(EMBEDDED_COVERAGE) $(BIN)/coverage run -m pytest -m "embedded and not postgres" $(DURATIONS) $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet --data-file=$(EMBEDDED_COVERAGE) $(dir $(EMBEDDED_COVERAGE))
	$(BIN)/python scripts/embedded_coverage.py $(EMBEDDED_COVERAGE)

test: test-postgres test-embedded

# The inner loop: the tests that touch no database, and the API tests, on SQLite (a few minutes).
QUICK_TESTS := tests/test_archive.py tests/test_canonical_json.py tests/test_merkle.py tests/test_signing.py \
	tests/test_workflow_spec.py tests/test_api.py tests/test_artifacts.py tests/test_signatures_api.py \
	tests/test_policy_api.py tests/test_gpu_quotas.py tests/test_workflows.py tests/test_cross_tenant.py \
	tests/test_cross_tenant_references.py tests/test_strict_inputs.py tests/test_wrong_shapes.py \
	tests/test_policy_sandbox.py
test-quick: install-test
	rm -rf $(CURDIR)/var/$(TEST_DB)-quick
	DATABASE_URL=sqlite:///$(CURDIR)/var/$(TEST_DB)-quick/$(TEST_DB).sqlite3 CELERY_BROKER_URL=filesystem:// \
	NEOCLOUD_DATA_DIR=$(CURDIR)/var/$(TEST_DB)-quick NEOCLOUD_TEST_STACK=embedded NEOCLOUD_FAST_PASSWORD_HASHER=1 \
	$(BIN)/pytest -m "not postgres and not browser and not worker" $(DURATIONS) $(QUICK_TESTS) $(PYTEST_ARGS)

# On a GPU node: NVML finds the GPUs, and a sandboxed step sees only the device it holds.
gpu-check: install sandbox
	$(BIN)/python scripts/gpu_check.py

# Refresh the README's console pictures from the browser tests.
screenshot:
	rm -rf $(CURDIR)/var/neocloud_test_screenshot-embedded
	$(MAKE) --no-print-directory TEST_DB=neocloud_test_screenshot screenshot-run

screenshot-run: install-test browser
	$(EMBEDDED_ENV) NEOCLOUD_SCREENSHOT=$(CURDIR)/docs/img/console.png \
	  NEOCLOUD_PROMOTION_SCREENSHOT=$(CURDIR)/docs/img/promotion.png NEOCLOUD_AUDIT_SCREENSHOT=$(CURDIR)/docs/img/audit.png \
	  $(BIN)/pytest -m browser tests/test_browser.py tests/test_promotion_console.py tests/test_compliance_console.py

clean:
	rm -rf $(VENV) var
