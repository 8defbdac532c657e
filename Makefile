# Entry points: `make reproduce` (the whole paper), `make test` (the suite), `make lab` (JupyterLab).
# `reproduce` and `test` share .venv (the package with its notebooks, cluster and test extras); `make lab`
# has an environment of its own (.venv-lab: the package, its notebooks extra and JupyterLab), because
# torchattacks, which only the tests use, pins a requests that JupyterLab refuses. `pip check` passes in both.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAB := .venv-lab
PROFILE ?=
DATASET ?= cifar10

.PHONY: install reproduce results test test-slurm check-install bench lab gpu-bundle clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The set-up alone: .venv with the package, its notebooks, cluster and test extras.
install: $(VENV)/.installed

reproduce: $(VENV)/.installed
	$(PY) -m reproduce run --dataset $(DATASET) $(if $(PROFILE),--profile $(PROFILE))

# Publish a finished run's tables, figures, claims, manifest and executed notebooks (one run: they go stale
# together) under results/ (what the README shows); `make reproduce` itself never writes there.
results:
	$(if $(PROFILE),,$(error give the run to publish: make results PROFILE=smoke DATASET=fashion-mnist))
	test -f figures/$(DATASET)-$(PROFILE)/manifest.json
	rm -rf results/$(DATASET)-$(PROFILE)
	mkdir -p results
	cp -r figures/$(DATASET)-$(PROFILE) results/$(DATASET)-$(PROFILE)
	if [ -d runs/notebooks/$(DATASET)-$(PROFILE) ]; then \
		cp -r runs/notebooks/$(DATASET)-$(PROFILE) results/$(DATASET)-$(PROFILE)/notebooks; fi

test: $(VENV)/.installed
	$(PY) -m ruff check reproduce tests
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests  # a worker per core, a file per worker, the longest files first (tests/conftest.py)

# The grid on a single-node Slurm cluster of this machine (scripts/slurm-local.sh; Debian's slurmctld, slurmd,
# slurm-client and munge, as root): job arrays, a cancelled and a requeued task, two commands at once.
test-slurm: $(VENV)/.installed
	$(PY) -m pytest -q -m slurm tests/test_slurm.py

# The core package alone (`pip install .`) in a new, empty environment (pip check, then an attack), and the
# notebooks install resolved against Colab's packages (tests/install). CI runs it after the suite, two tests
# at a time: they wait on the disk and the package index more than on the cores (542 s one at a time).
check-install: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist load -m install tests/install

$(LAB)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LAB)
	$(LAB)/bin/python -m pip install -q -e ".[notebooks]" "jupyterlab>=4"
	$(LAB)/bin/python -m pip check
	$(LAB)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Rooted at the repository (results/, figures/ and the executed notebooks open from it), showing notebooks/.
lab: $(LAB)/.installed
	$(LAB)/bin/jupyter lab --ServerApp.root_dir=. --ServerApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)  # root: containers

bench: $(VENV)/.installed
	$(PY) -m reproduce bench

# What the GPU machine lacks, for scripts/gpu_check.sh: the wheels (no package index there) and the
# compressed Fashion-MNIST, in gpu/ (ignored by git; carried with the code).
gpu-bundle: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps -d gpu/wheels -r scripts/gpu_requirements.txt
	mkdir -p gpu/data/FashionMNIST/raw
	cp /usr/share/datasets/fashion-mnist/*-ubyte.gz gpu/data/FashionMNIST/raw/

clean-venv:
	rm -rf $(VENV) $(LAB)
