# The command surface of MiniGPT. `make serve` and `make test` work on a fresh machine (Python 3.11+).
# `make serve` installs what serving needs; `make test` and `make install` add the dev tools (pytest, ruff,
# mypy, the openai SDK, transformers, Playwright: about 1.6 GB more).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_STAMP := $(VENV)/.torch-installed
SERVE_STAMP := $(VENV)/.serve-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: install install-serve serve test lint fmt demo-model bench clean

# The venv and torch: the CPU build unless an NVIDIA GPU is present (scripts/install-torch.sh says how).
$(TORCH_STAMP): scripts/install-torch.sh
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "MiniGPT needs Python 3.11 or newer; '$(PY)' is $$($(PY) --version 2>&1). Try: make PY=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash scripts/install-torch.sh $(BIN)/python
	touch $@

$(SERVE_STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(DEV_STAMP)

install-serve: $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/minigpt-serve

test: install lint
	$(BIN)/python -m pytest -m "not slow and not gpu"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo-model: $(SERVE_STAMP)
	$(BIN)/python -m training.demo $(DEMO_ARGS)

bench: install
	$(BIN)/minigpt-bench serve
	$(BIN)/minigpt-bench train

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
