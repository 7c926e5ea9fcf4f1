# The two commands: `make run` (set up and run the demo) and `make test` (set up and run the tests).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup setup-test run test bench eval clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

run: setup
	scripts/run.sh serve_config.yaml

test: setup-test
	scripts/test.sh $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/lookout bench

eval: setup
	$(VENV)/bin/lookout eval

clean:
	rm -rf $(VENV) data
