PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  := ibkr,parquet,dagster,dev

.PHONY: install test lint run bench soak clean

install: $(BIN)/mdp

$(BIN)/mdp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

run: install
	$(BIN)/mdp up

bench: install
	$(BIN)/python -m benchmarks

soak: install
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mdp .pytest_cache .ruff_cache .mypy_cache
