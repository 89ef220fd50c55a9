# deploykit's front door. `make demo` and `make test` do all the set-up on a fresh machine with
# only Python 3.10+: they create .venv and install deploykit into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OLDEST := .venv-oldest
# The oldest Celery/kombu this project claims to support (pyproject.toml); `make test` runs the
# broker, fleet, inspection and scan tests on them too.
OLDEST_PINS := celery==5.3.0 kombu==5.3.0 amqp==5.1.1 typer==0.12.4 click==8.1.7 rich==10.11.0 httpx==0.23.1 msgspec==0.13.1 redis==4.5.4
OLDEST_TESTS := tests/unit tests/scan tests/manifest tests/doctor \
	tests/integration/test_fleet.py tests/integration/test_inspect_cli.py \
	tests/integration/test_inspect_cli_rabbitmq.py tests/integration/test_redis_broker.py \
	tests/integration/test_rabbitmq_broker.py tests/integration/test_scan.py \
	tests/integration/test_probe.py tests/integration/test_drain_redis.py
# pytest-xdist processes per run. The suite mostly waits on real workers and brokers, so more
# processes than the 2 cores it was measured on pay off (README, Development). worksteal: an idle
# process takes queued tests from a busy one, so a few long tests do not hold up the end.
TEST_WORKERS ?= 6
# Every run: in parallel, the 15 slowest listed, no cache written into the work tree. A test that
# hangs fails after pyproject's pytest-timeout instead of hanging the run.
PYTEST := -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --durations=15
PYTEST_ARGS ?=
# $(call allow_none,COMMAND): pytest's exit 5 ("no test collected") is no failure for this target.
allow_none = rc=0; $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "$@: no test collected"; else exit $$rc; fi

.PHONY: demo services test test-newest test-oldest test-faults test-real lint format bench clean

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

## make services: start what the tests talk to (Redis, RabbitMQ and its management plugin)
services:
	@scripts/test-services

## make test: the suite on the newest supported Celery, then the broker, fleet, inspection and
## scan tests on the oldest claimed; not the `faults` tests (make test-faults)
test: test-newest test-oldest

test-newest: $(VENV)/.dev-installed services
	$(BIN)/python $(PYTEST) -m "not faults" $(PYTEST_ARGS)

test-oldest: $(OLDEST)/.installed services
	$(OLDEST)/bin/python $(PYTEST) -q -m "not faults" $(PYTEST_ARGS) $(OLDEST_TESTS)

## make test-faults: the slow fault and soak tests (broker restarts, rolling restarts under load)
test-faults: $(VENV)/.dev-installed services
	$(call allow_none,$(BIN)/python $(PYTEST) -m faults $(PYTEST_ARGS))

## make test-real: deploykit on real projects' code and beside their pins (tests/real, tests/install;
## slow: it builds virtual environments, see README)
REAL_TESTS := $(wildcard tests/real tests/install)
test-real: $(VENV)/.dev-installed services
	scripts/real-system-packages
	$(if $(REAL_TESTS),$(call allow_none,DEPLOYKIT_REAL=1 $(BIN)/python $(PYTEST) --timeout 1800 $(PYTEST_ARGS) $(REAL_TESTS)),@echo "$@: no real-project tests here")

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
