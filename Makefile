# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Both first create or update .venv/ (scripts/setup_env.sh; seconds when nothing changed).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: env demo test test-all clean-env

env:
	@bash scripts/setup_env.sh

demo: env
	@bash scripts/demo.sh

# Default run: everything but tests marked slow. CI runs `make test`.
test: env
	@bash scripts/run_tests.sh -m "not slow" $(PYTEST_ARGS)

test-all: env
	@bash scripts/run_tests.sh $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
