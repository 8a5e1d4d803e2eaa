# SPDX-License-Identifier: MIT
# torchfault: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test bench soak lint venv clean docs

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/torchfault campaign --config examples/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples hubconf.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples hubconf.py
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) -m benchmarks

# long campaigns (10^6 fast-engine runs, 10^5 with worker processes: memory, store, progress/ETA),
# then every executor x engine pair, uninterrupted and killed at 5 seeded random instants
soak: $(STAMP)
	$(PY) -m benchmarks.soak
	TORCHFAULT_SOAK=1 TORCHFAULT_CHAOS_KILLS=5 $(PY) -m pytest -q -s tests/campaign/test_chaos.py tests/campaign/test_executors.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples hubconf.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples hubconf.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
