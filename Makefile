PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  := ibkr,parquet,import,dagster,dev

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

# make soak [MINUTES=10] [SEED=7] [SOAK_ARGS="--faults gateway_restart=2,poison=3"]
# (the same as .venv/bin/python -m benchmarks.soak --minutes 10 --seed 7 ...)
soak: install
	$(BIN)/python -m benchmarks.soak $(if $(MINUTES),--minutes $(MINUTES)) \
		$(if $(SEED),--seed $(SEED)) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mdp .pytest_cache .ruff_cache .mypy_cache
