# The README's commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
RUN_DIR ?= runs/cifar10-resnet18
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install console browser serve run test lint typecheck pytest compose-test bench docs docs-screenshot client catalog clean

install: $(VENV)/.installed console

# Installs from the lock (constraints.txt): torch and torchvision come from this machine's disk.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The web console (console/ -> app/console/static/dist): npm installs from the lock, esbuild bundles.
CONSOLE_DIST := app/console/static/dist/app.js
CONSOLE_SOURCES := $(shell find console/src -type f 2>/dev/null) $(wildcard examples/*.yaml)

console: $(CONSOLE_DIST)

console/node_modules/.package-lock.json: console/package.json console/package-lock.json
	cd console && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CONSOLE_DIST): console/node_modules/.package-lock.json $(CONSOLE_SOURCES)
	cd console && npm run --silent build

# Debian's Chromium for the console's browser tests (Playwright cannot download its own here); installed once.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The service in its embedded mode: the API and a worker, SQLite and files under FT_HOME (./.finetune).
serve: install
	$(BIN)/finetune serve --host $(HOST) --port $(PORT)

# Fine-tune ResNet-18 on a 100-per-class subset of CIFAR-10 with the engine alone, then print the summary.
run: install
	$(BIN)/python -m training run examples/cifar10-resnet18.yaml --out $(RUN_DIR)

# Everything CI checks: lint, types, and the whole test suite (slow tests included).
test: install browser lint typecheck pytest

# Without Docker: the compose file is checked against the compose-spec schema, the Dockerfile by hadolint, and
# tests/test_deploy.py checks the commands and settings they use against the project (make compose-test runs them).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy training app worker cli

pytest: install
	$(BIN)/pytest

# The production form for real: the images built from the Dockerfile, `docker compose --profile cpu up`, and a job
# through the published port, its worker stopped and started mid-job, the stack down and up (tests/compose/run).
# Needs a Docker engine; FT_COMPOSE_STANDINS=1 (CI) installs and starts one here with local stand-in base images.
compose-test: install
	tests/compose/run

bench: install
	$(BIN)/python bench/engine_vs_seed.py

# Regenerate the README's spec and configuration references from the code.
docs: install
	$(BIN)/python -m app.docs

# Regenerate docs/job-page.png, the README's picture of a job page, with the console's browser test.
docs-screenshot: install browser
	FT_CONSOLE_DOCS_SCREENSHOT=1 $(BIN)/pytest tests/console -k "watch_it_train and embedded" -q

# Regenerate app/client/client.py (Client) from app/client/async_client.py (AsyncClient), its source.
client: install
	$(BIN)/python -m app.client.generate

# Regenerate training/catalog.json after a torchvision upgrade.
catalog: install
	$(BIN)/python -m training.catalog

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache console/node_modules app/console/static/dist build
