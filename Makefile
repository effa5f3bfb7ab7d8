# Two entry points for a fresh machine with only Python >= 3.10 and pip:
#   make demo   set up .venv and pretrain a tiny SSAST on the synthetic demo corpus
#               (generated into demo_data/ first when missing)
#   make test   set up .venv (with the test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torchaudio must match torch exactly; pin both so pip never mixes builds.
TORCH_PINS ?= "torch==2.11.*" "torchaudio==2.11.*"
DEMO_DIR ?= demo_data
DEMO_ARGS ?=
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
	$(BIN)/ssast-pretrain fit --config configs/pretrain/demo.yaml --data.init_args.demo_corpus $(DEMO_DIR) \
		--data.init_args.train $(DEMO_DIR)/unlabeled --data.init_args.val $(DEMO_DIR)/events/val $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/encoder.py
	$(BIN)/python benchmarks/pretrain_step.py
	$(BIN)/python benchmarks/pretrain_step.py --method distill

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
