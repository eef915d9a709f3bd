# The two commands: `make demo` (the main job) and `make test`. Each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat requirements.txt pyproject.toml 2>/dev/null | md5sum | cut -c1-12)
PYTEST_ARGS ?=
# pytest-xdist workers for all but the SLURM tests (a file per worker at a time, tests/conftest.py);
# the SLURM tests run after them, alone, as jobs on the local cluster's two CPUs
TEST_WORKERS ?= 2

.PHONY: venv data browser slurm demo demo-full lint test test-fast bench clean-runs

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (stemlab)" >/dev/null
	@rm -f $(VENV)/.stamp-* && touch $@

data:
	@scripts/install_data.sh

browser:
	@scripts/install_browser.sh

slurm:
	@scripts/slurm_local.sh start

demo: venv data
	$(PY) -m analysis demo

demo-full: venv data
	$(PY) -m analysis demo --full

lint: venv
	$(VENV)/bin/ruff check analysis tests benchmarks scripts
	$(VENV)/bin/ruff format --check analysis tests benchmarks scripts

test: venv data browser slurm lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slurm" --durations=30 $(PYTEST_ARGS); \
		rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	$(PY) -m pytest -q -m slurm --durations=10 $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test-fast: venv data
	$(PY) -m pytest -q -m "not slow and not slurm and not browser" $(PYTEST_ARGS)

bench: venv data
	$(PY) -m benchmarks.run

clean-runs:
	rm -rf runs sweeps reports artifacts
