# Two entry points for a fresh machine with only Python >= 3.10 and pip:
#   make demo   set up .venv, then on the synthetic demo corpus (generated into demo_data/
#               first when missing) pretrain a small encoder, finetune it and the same
#               tasks from scratch, and report both (runs/demo/report.md)
#   make test   set up .venv (with the test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torchaudio must match torch exactly; pin both so pip never mixes builds (torchaudio 2.11.1
# installs beside torch 2.11.0 but its libtorchaudio.so does not load there).
TORCH_PINS ?= "torch==2.11.0" "torchaudio==2.11.0"
DEMO_DIR ?= demo_data
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench bench-gpu clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/ssast-demo --corpus $(DEMO_DIR) --out $(DEMO_OUT) $(DEMO_ARGS)

# One pytest-xdist worker per core, a test file to a worker (a test_guides_*.py file runs its guides in order on one machine).
PYTEST_PARALLEL ?= -n auto --dist loadfile

test: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/encoder.py
	$(BIN)/python benchmarks/pretrain_step.py
	$(BIN)/python benchmarks/pretrain_step.py --method asit
	$(BIN)/python benchmarks/embed.py

# What a lent GPU must give first (about 8 minutes on one H100 or H200; CPU-sized without CUDA).
bench-gpu: setup
	$(BIN)/python benchmarks/gpu.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
