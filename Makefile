# Entry points: `make reproduce` (the whole paper), `make test` (the suite), `make lab` (JupyterLab).
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?=
DATASET ?= cifar10

.PHONY: reproduce results test bench lab gpu-bundle clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

reproduce: $(VENV)/.installed
	$(PY) -m reproduce run --dataset $(DATASET) $(if $(PROFILE),--profile $(PROFILE))

# Publish a finished run's tables, figures, claims and manifest under results/ (what the README shows);
# `make reproduce` itself never writes there.
results:
	$(if $(PROFILE),,$(error give the run to publish: make results PROFILE=smoke DATASET=fashion-mnist))
	test -f figures/$(DATASET)-$(PROFILE)/manifest.json
	rm -rf results/$(DATASET)-$(PROFILE)
	mkdir -p results
	cp -r figures/$(DATASET)-$(PROFILE) results/$(DATASET)-$(PROFILE)

test: $(VENV)/.installed
	$(PY) -m ruff check reproduce tests
	$(PY) -m pytest -q tests

# JupyterLab is a second install: jupyterlab-server needs requests>=2.31, which torchattacks' metadata
# (requests~=2.25.1; it never imports requests) forbids in one resolve. pip warns about it; both work.
$(VENV)/.lab: $(VENV)/.installed
	$(PY) -m pip install -q "jupyterlab>=4"
	touch $@

lab: $(VENV)/.lab
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)  # root: containers

bench: $(VENV)/.installed
	$(PY) -m reproduce bench

# What the GPU machine lacks, for scripts/gpu_check.sh: the wheels (no package index there) and the
# compressed Fashion-MNIST, in gpu/ (ignored by git; carried with the code).
gpu-bundle: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps -d gpu/wheels -r scripts/gpu_requirements.txt
	mkdir -p gpu/data/FashionMNIST/raw
	cp /usr/share/datasets/fashion-mnist/*-ubyte.gz gpu/data/FashionMNIST/raw/

clean-venv:
	rm -rf $(VENV)
