# Two entry points: `make reproduce` (the whole paper) and `make test` (the suite).
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?=
DATASET ?= cifar10

.PHONY: reproduce test bench clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

reproduce: $(VENV)/.installed
	$(PY) -m reproduce run --dataset $(DATASET) $(if $(PROFILE),--profile $(PROFILE))

test: $(VENV)/.installed
	$(PY) -m ruff check reproduce tests
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m reproduce bench

clean-venv:
	rm -rf $(VENV)
