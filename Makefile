# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install demo test lint services-start services-stop bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The exact pin takes the CPU build of torch that lies on disk; a looser one pulls CUDA wheels.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# `PORT=8001 make demo` (or `make demo PORT=8001`) serves on another port.
demo: install
	@PORT=$(or $(PORT),8000) scripts/demo.sh

# Uses DATABASE_URL / REDIS_URL when set (CI exports them); otherwise starts PostgreSQL and Redis
# under var/ when they are installed, and falls back to SQLite (Redis tests then skip).
test: install
	@set -e; \
	if [ -z "$${DATABASE_URL:-}$${REDIS_URL:-}" ] && scripts/services.sh start >var/services.env 2>/dev/null; then \
	  source var/services.env; echo "make test: using local services ($$DATABASE_URL, $$REDIS_URL)"; fi; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy portal/ reshard/ training/ jobs/ artifacts/services/ artifacts/selectors.py artifacts/tasks.py gateway/ access/services/ access/selectors.py \
		finetune/services.py finetune/selectors.py finetune/runs.py finetune/tasks.py finetune/hyperparameters.py

services-start:
	@scripts/services.sh install && scripts/services.sh start

services-stop:
	@scripts/services.sh stop

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf var/ .pytest_cache
