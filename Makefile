# The README's commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
RUN_DIR ?= runs/cifar10-resnet18

.PHONY: install run test lint typecheck pytest bench catalog clean

install: $(VENV)/.installed

# Installs from the lock (constraints.txt): torch and torchvision come from this machine's disk.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Fine-tune ResNet-18 on a 100-per-class subset of CIFAR-10, then print the summary.
run: install
	$(BIN)/python -m training run examples/cifar10-resnet18.yaml --out $(RUN_DIR)

# Everything CI checks: lint, types, and the whole test suite (slow tests included).
test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy training app worker

pytest: install
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/engine_vs_seed.py

# Regenerate training/catalog.json after a torchvision upgrade.
catalog: install
	$(BIN)/python -m training.catalog

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
