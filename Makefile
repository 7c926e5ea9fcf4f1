# The two commands: `make run` (set up and run the demo) and `make test` (set up and run the tests).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup setup-test run test test-fast lint format bench eval clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

run: setup
	scripts/run.sh serve_config.yaml

test: setup-test
	scripts/lint.sh
	scripts/test.sh $(PYTEST_ARGS)

# A quick loop while working: no end-to-end or slow tests (CI runs them all).
test-fast: setup-test
	scripts/test.sh -m "not slow and not e2e" $(PYTEST_ARGS)

lint: setup-test
	scripts/lint.sh

format: setup-test
	$(VENV)/bin/ruff format .

bench: setup
	$(VENV)/bin/lookout bench

eval: setup
	$(VENV)/bin/lookout eval

clean:
	rm -rf $(VENV) data
