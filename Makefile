# deploykit's front door. `make demo` and `make test` do all the set-up on a fresh machine with
# only Python 3.10+: they create .venv and install deploykit into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OLDEST := .venv-oldest
# The oldest Celery/kombu this project claims to support (pyproject.toml); `make test` runs the
# broker, fleet and inspection tests on them too.
OLDEST_PINS := celery==5.3.0 kombu==5.3.0 amqp==5.1.1 typer==0.12.4 click==8.1.7 rich==10.11.0 httpx==0.23.1 msgspec==0.13.1 redis==4.5.4
PYTEST_ARGS ?=

.PHONY: demo test test-newest test-oldest lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

$(OLDEST)/.installed: pyproject.toml
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -m pip install -q -e ".[test]" $(OLDEST_PINS)
	touch $@

## make demo: a narrated tour against an embedded Redis and two real workers
demo: $(VENV)/.demo-installed
	$(BIN)/python -m deploykit.demo

## make test: the whole suite on the newest supported Celery, then again on the oldest claimed
## (all but the slow orchestration soak tests, which exercise the same remote-control calls)
test: test-newest test-oldest

test-newest: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
		tests/unit tests/scan tests/manifest tests/doctor \
		tests/integration/test_fleet.py tests/integration/test_inspect_cli.py \
		tests/integration/test_inspect_cli_rabbitmq.py tests/integration/test_redis_broker.py \
		tests/integration/test_rabbitmq_broker.py tests/integration/test_scan.py \
		tests/integration/test_probe.py tests/integration/test_drain_redis.py

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check deploykit tests
	$(BIN)/ruff format --check deploykit tests
	$(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff format deploykit tests
	$(BIN)/ruff check --fix deploykit tests

## make bench: benchmarks (not part of `make test`); results land in tests/bench/results/
bench: $(VENV)/.dev-installed
	@for script in tests/bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
