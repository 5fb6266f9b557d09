PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  := ibkr,import,dagster,dev
# The versions the tests ran with: `make install` installs exactly these (pip install -c),
# `make lock` regenerates the file (see below).
CONSTRAINTS := requirements/constraints.txt
UV_VERSION  := 0.13.9

.PHONY: install lock test test-ib-insync lint run bench soak clean

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
	$(BIN)/pytest -q --durations=15

# make test-ib-insync: the IBKR tests that exercise the client library, run again in a
# second venv with ib_insync (the provider's fallback) and no ib_async, against the
# simulated gateway. ib_insync and ib_async cannot share a venv: both install the
# top-level package `eventkit`. Takes two to three minutes (less once the venv exists).
IB_INSYNC_VENV := .venv-ib-insync
IB_INSYNC_TESTS := tests/ibkr/test_streaming.py tests/ibkr/test_faults.py \
	tests/ibkr/test_resume.py tests/ibkr/test_instrument_streams.py \
	tests/ibkr/test_backfill.py tests/ibkr/test_units.py tests/ibkr/test_timers.py \
	"tests/ibkr/test_accounting.py::test_frozen_database_and_sigterm_on_a_fast_ibkr_quotes_stream_balances[60-False]"
# The ini's warning filters name dagster, which this venv does not have.
IB_INSYNC_PYTEST := -q -o "filterwarnings=ignore:.*XDG_RUNTIME_DIR.*"

test-ib-insync: $(IB_INSYNC_VENV)/bin/mdp
	$(IB_INSYNC_VENV)/bin/python -c "import importlib.util as u; \
		from mdp_core.providers.ibkr.compat import load_ib_library as load; \
		assert u.find_spec('ib_async') is None, 'ib_async is installed'; \
		assert load().name == 'ib_insync', load().name"
	$(IB_INSYNC_VENV)/bin/pytest $(IB_INSYNC_PYTEST) $(IB_INSYNC_TESTS)

$(IB_INSYNC_VENV)/bin/mdp: pyproject.toml $(CONSTRAINTS) requirements/ib-insync.in
	$(PY) -m venv $(IB_INSYNC_VENV)
	$(IB_INSYNC_VENV)/bin/pip install --quiet --upgrade pip
	$(IB_INSYNC_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) -r requirements/ib-insync.in \
		-e ".[dev]"
	@touch $@

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
	rm -rf $(VENV) $(IB_INSYNC_VENV) .mdp .pytest_cache .ruff_cache .mypy_cache
