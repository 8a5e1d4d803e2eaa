# SPDX-License-Identifier: MIT
# torchfault: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test bench lint venv clean docs

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
	$(PY) -m pytest -q

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples hubconf.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples hubconf.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
