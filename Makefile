# The two commands of the quick start: `make demo` and `make test`. Both create .venv and
# install everything on a fresh machine, with the versions pinned in constraints.txt.
PYTHON ?= python3
# Extra pip arguments, e.g. PyTorch's CPU index where the default index serves CUDA builds:
# make PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" test
PIP_ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

# Two workers, one per core; a test group (xdist_group) stays on one worker, so that the
# process-heavy tests (faults, concurrency) do not compete with each other for the cores.
PYTEST := $(PY) -m pytest -n 2 --dist loadgroup

.PHONY: install install-bench demo test test-fast test-faults test-interrupts coverage lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(PIP_ARGS) -c constraints.txt -e '.[dev,azureml]'
	touch $(STAMP)

# The load generator of benchmarks/serve_load.py (locust, the `bench` extra), pinned.
install-bench: $(STAMP)
	$(PY) -m pip install --quiet $(PIP_ARGS) -c constraints.txt -e '.[bench]'

demo: $(STAMP)
	$(VENV)/bin/onnxport demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The SIGKILL fault test with 20 kills instead of the suite's 12 (each stage hit 3-4 times).
test-faults: $(STAMP)
	ONNXPORT_FAULT_TRIALS=20 $(PY) -m pytest tests/test_faults.py

# SIGINT at all 20 moments of tests/test_interrupts.py instead of the suite's 7.
test-interrupts: $(STAMP)
	ONNXPORT_INTERRUPT_TRIALS=20 $(PYTEST) tests/test_interrupts.py

# The whole architecture/task matrix through the pipeline (~20 min on 2 cores): docs/coverage.md.
coverage: $(STAMP)
	$(PY) -m onnxport.coverage --output docs/coverage.md

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
