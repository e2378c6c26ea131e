# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Both first create or update .venv/ (scripts/setup_env.sh; seconds when nothing changed).
#   make env TORCH=system      .venv/ that keeps the system Python's torch (e.g. a CUDA build)
#   make env OFFLINE=DIR       install from a wheelhouse only (no network)
#   make wheelhouse [PYTHON_VERSION=3.11] [PLATFORM=manylinux_2_28_x86_64] [WHEELHOUSE=wheelhouse]
VENV ?= .venv
PYTEST_ARGS ?=
# make test's pytest-xdist workers (0: one process); modules marked xdist_group run in one worker
TEST_WORKERS ?= 2
TORCH ?= cpu
OFFLINE ?=
WHEELHOUSE ?= wheelhouse
PYTHON_VERSION ?=
PLATFORM ?=

ENV_FLAGS = $(if $(filter system,$(TORCH)),--system-torch) $(if $(OFFLINE),--offline $(OFFLINE))

.PHONY: env demo test test-all wheelhouse clean-env

env:
	@bash scripts/setup_env.sh $(ENV_FLAGS)

demo: env
	@bash scripts/demo.sh

# Default run: everything but tests marked slow, on TEST_WORKERS processes. CI runs `make test`.
test: env
	@bash scripts/run_tests.sh -m "not slow" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-all: env
	@bash scripts/run_tests.sh $(PYTEST_ARGS)

wheelhouse: env
	@bash scripts/wheelhouse.sh --dest $(WHEELHOUSE) $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(PLATFORM),--platform $(PLATFORM))

clean-env:
	rm -rf $(VENV)
