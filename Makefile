# The README's two commands: `make run` (set up, run the pipeline on the embedded digits)
# and `make test` (set up, lint, test). Installs are pinned by constraints.txt.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint format clean chromium

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,jax]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/ganpipe run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two test workers (the machines have 2 cores; tests/conftest.py keeps each module on one worker).
# GANPIPE_REQUIRE_JAX: setup installs the jax extra, so a broken jax fails the JAX tests, not skips them.
# GANPIPE_REQUIRE_UI: the UI test (tests/ui.py) fails, not skips, without chromium.
TEST_WORKERS ?= 2
test: lint chromium
	GANPIPE_REQUIRE_JAX=1 GANPIPE_REQUIRE_UI=1 $(BIN)/pytest -q -n $(TEST_WORKERS)

# Debian's chromium for the UI test, once (sudo unless root).
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

.PHONY: serve
serve: setup  # Prefect server, MLflow server and a worker on 127.0.0.1 (README, Scheduled runs)
	$(BIN)/ganpipe serve

clean:
	rm -rf data/prepared data/synthetic data/augmented models checkpoints evaluator metrics mlflow.db mlartifacts
