# The two commands of the README: `make up` runs mailbus, `make test` passes the tests.
# Both create .venv on first use, so a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/demo.yaml
DATA   ?= var
# Most integration tests wait on sockets and timers, not the CPU: three workers, each
# taking whole files (so a module's fixtures are set up once), cut the suite's time
# by more than half even on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
TYPED  := libs services ops tests bench deploy/nats

.PHONY: up test lint typecheck pytest bench clean test-tools maillog-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/mailbus up --config $(CONFIG) --data-dir $(DATA)

test: $(STAMP) lint pytest

# The architecture's rules (pyproject's [tool.importlinter]) and strict types over all
# the code, adapters and test support included: both are part of the lint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy $(TYPED)

typecheck: $(STAMP)
	$(BIN)/mypy $(TYPED)

# Debian tools the tests run for real (the antispam tests start a spamd); installed with
# apt-get when missing, as root, the way CI runs.
test-tools:
	@command -v spamd >/dev/null || { apt-get update -q && apt-get install -y -q spamd spamassassin; }

pytest: $(STAMP) test-tools maillog-tools
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The mail log's real readers, run by the tests (never skipped): Debian's pflogsumm
# and fail2ban-regex, installed with apt-get when missing (CI runs as root).
MAILLOG_TOOLS := pflogsumm:pflogsumm fail2ban-regex:fail2ban
maillog-tools:
	@missing=""; for pair in $(MAILLOG_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

bench: $(STAMP)
	$(BIN)/python bench/e2e.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DATA) .mypy_cache .pytest_cache .ruff_cache
