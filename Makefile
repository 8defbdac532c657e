# Entry points: `make reproduce` (the whole paper), `make test` (the suite), `make lab` (JupyterLab).
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?=
DATASET ?= cifar10

.PHONY: reproduce test bench lab clean-venv

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

# JupyterLab is a second install: jupyterlab-server needs requests>=2.31, which torchattacks' metadata
# (requests~=2.25.1; it never imports requests) forbids in one resolve. pip warns about it; both work.
$(VENV)/.lab: $(VENV)/.installed
	$(PY) -m pip install -q "jupyterlab>=4"
	touch $@

lab: $(VENV)/.lab
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(VENV)/.installed
	$(PY) -m reproduce bench

clean-venv:
	rm -rf $(VENV)
