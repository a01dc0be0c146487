# Entry points, each self-contained on a fresh machine:
#   make demo        create .venv if missing, install saekit, run the offline end-to-end demo
#   make test        create .venv if missing, install saekit with dev extras, lint (ruff and the
#                    layering contract, lint-imports) and run the whole test suite: what CI runs
#                    (and install the OS's Chromium for the browser test when missing, as root)
#   make test-fast   the developer loop: the same lint, then every test not marked `slow`
#                    (whole pipelines, kill -9, clusters, servers, browsers, fuzzing, memory);
#                    under 2 minutes on 2 cores
# TORCH_SPEC is installed before saekit so that a CPU-only machine never pulls CUDA wheels;
# override it on a GPU machine, e.g. `make demo TORCH_SPEC="torch"`.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT   ?= demo-output
BIN        := $(VENV)/bin

.PHONY: demo test test-fast lint browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/sae demo --out $(DEMO_OUT)

# The layering contract is [tool.importlinter] in pyproject.toml: each stage imports only the
# layers below it (tests/test_layering.py shows that a planted upward import breaks it).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/lint-imports --no-cache

# The dashboard's browser test drives the OS's headless Chromium (never a downloaded build):
# installed here when missing and the machine allows it (root with apt); otherwise that test
# skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt) for the dashboard's browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update -qq -o DPkg::Lock::Timeout=300 && apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 --no-install-recommends chromium fonts-liberation \
			>/dev/null; } || echo "could not install chromium: the browser test will skip"; \
	else \
		echo "no chromium, and apt needs root: the dashboard's browser test will skip"; \
	fi

test: lint browser
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
