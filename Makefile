# The README's two commands: `make run` (set up, run the pipeline on the embedded digits)
# and `make test` (set up, lint, test). Installs are pinned by constraints.txt.
# Python 3.11, 3.12 or 3.13: `make setup PYTHON=python3.13 VENV=.venv313`. By default the newest
# working python3.11 (on PATH, else pyenv's; a pyenv shim that cannot run it does not count).
PYTHON ?= $(shell .ci/find-python 3.11 2>/dev/null || echo python3.11)
VENV ?= .venv
BIN := $(VENV)/bin
# The Keras backends: TensorFlow on CPU (cpu) and JAX on CPU (jax), which the tests use both of.
# On an NVIDIA GPU: EXTRAS=cuda,dev (TensorFlow) or EXTRAS=cpu,jax-cuda,dev (docs/gpu.md).
EXTRAS ?= cpu,jax,dev

.PHONY: setup run test lint format clean smoke chromium

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
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

# Install and a short end-to-end run on the other supported Pythons (.ci/smoke, into .venv312 and
# .venv313: about 2.5-3.5 min each from a fresh clone, 1.5-2 of them the install). CI runs it after
# `make test` and fails if a version is missing; here a missing one is skipped with a message.
SMOKE_PYTHONS ?= 3.12 3.13
smoke:
	for v in $(SMOKE_PYTHONS); do SMOKE_MISSING=skip .ci/smoke $$v || exit 1; done

.PHONY: serve
serve: setup  # Prefect server, MLflow server and a worker on 127.0.0.1 (docs/prefect.md, Scheduled runs)
	$(BIN)/ganpipe serve

clean:
	rm -rf data/prepared data/synthetic data/augmented models checkpoints evaluator metrics mlflow.db mlartifacts
