# The command surface of MiniGPT. `make serve` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint fmt demo-model bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first where none is present: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
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

demo-model: install
	$(BIN)/python -m training.demo $(DEMO_ARGS)

bench: install
	$(BIN)/minigpt-bench serve
	$(BIN)/minigpt-bench train

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
