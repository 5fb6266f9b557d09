PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  := ibkr,import,dagster,dev
# The versions the tests ran with: `make install` installs exactly these (pip install -c),
# `make lock` regenerates the file (see below).
CONSTRAINTS := requirements/constraints.txt
UV_VERSION  := 0.13.9

.PHONY: install lock test lint run bench soak clean

install: $(BIN)/mdp

$(BIN)/mdp: pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@touch $@

# make lock [UPGRADE=1]: resolve pyproject.toml's dependencies and every extra, plus the
# pins of any requirements/*.in (packages another environment installs with the same
# constraints, e.g. a second venv for tests), for every platform and Python >= 3.11, into
# $(CONSTRAINTS). The versions pinned there are kept where they still fit; UPGRADE=1 takes
# the newest ones pyproject.toml allows. Then `make install` (it reinstalls) and `make test`.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile --quiet pyproject.toml $(wildcard requirements/*.in) --all-extras \
		--universal --python-version 3.11 --custom-compile-command "make lock" \
		$(if $(UPGRADE),--upgrade) -o $(CONSTRAINTS)

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
