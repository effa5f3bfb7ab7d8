# Two entry points for a fresh machine with only Python >= 3.10 and pip:
#   make demo   set up .venv and build the synthetic demo corpus in demo_data/
#   make test   set up .venv (with the test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torchaudio must match torch exactly; pin both so pip never mixes builds.
TORCH_PINS ?= "torch==2.11.*" "torchaudio==2.11.*"
DEMO_DIR ?= demo_data
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/ssast-data demo --out $(DEMO_DIR) --overwrite

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
