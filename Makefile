# Two commands for a fresh machine:
#   make run    - the daemon on its embedded SQLite store (simulated GPUs when no NVIDIA driver)
#   make test   - the whole test suite (PostgreSQL tests use the local server below)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GPUWARDEN_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export GPUWARDEN_TEST_POSTGRES_URL

.PHONY: run demo test lint bench clean

$(BIN)/gpuwarden: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: $(BIN)/gpuwarden
	$(BIN)/gpuwarden run $(if $(CONFIG),--config $(CONFIG),)

demo: $(BIN)/gpuwarden
	$(BIN)/gpuwarden demo

test: $(BIN)/gpuwarden
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/gpuwarden
	$(BIN)/ruff check gpuwarden tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/gpuwarden
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
