"""Installs as a user makes them (`make check-install`; CI runs it beside the suite, it needs the package
index and a few minutes): the core package alone in a new, empty environment, and the notebooks install
resolved against what Colab already has."""
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("colab_pins.txt")
pytestmark = pytest.mark.install

# Run inside the new environment: an attack on a small model, checked against the threat model.
ATTACK = """
import torch, reproduce
from reproduce import AttackSpec, Classifier, SmallCNN, attack, make_loss
torch.manual_seed(0)
model = Classifier(SmallCNN(1, 16), make_loss("AAML", 16, 10)).eval()
x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
spec = AttackSpec("pgd", eps=8 / 255, step=2 / 255, steps=5)
x_adv = attack(model, x, y, spec)
assert (x_adv - x).abs().max() <= spec.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
print("attack ok", reproduce.__file__)
"""


def pip(python, *args, **kw):
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, **kw)


def test_core_install_in_an_empty_environment(tmp_path):
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    installed = pip(python, "install", "-q", str(REPO))
    assert installed.returncode == 0, installed.stderr[-3000:]
    check = pip(python, "check")
    assert check.returncode == 0, check.stdout
    names = {p["name"].lower() for p in json.loads(pip(python, "list", "--format=json").stdout)}
    # the core pulls in none of the notebooks', cluster's or tests' packages
    assert not names & {"papermill", "ipykernel", "matplotlib", "seaborn", "submitit", "torchattacks", "pytest"}
    assert {"torch", "safetensors", "pyautoattack", "discriminative-robustness"} <= names
    ran = subprocess.run([str(python), "-c", ATTACK], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "attack ok" in ran.stdout and str(tmp_path / "env") in ran.stdout  # the installed copy, not the checkout


def test_requirements_txt_gives_a_working_notebooks_install(tmp_path):
    """What the README's `pip install -r requirements.txt` gives in a new environment: the package and what
    its notebooks import, with nothing broken."""
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    installed = pip(python, "install", "-q", "-r", "requirements.txt", cwd=REPO)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert pip(python, "check").returncode == 0
    code = ("import matplotlib, papermill, seaborn, sklearn, reproduce\n"
            "from reproduce import figures, start\n"
            "print('notebooks ok', reproduce.__file__)")
    ran = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert str(REPO / "reproduce") in ran.stdout  # the checkout's package, editable, as the notebooks use it


def dry_run(tmp_path, *requirements):
    report = tmp_path / "report.json"
    done = pip(sys.executable, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "-c", str(PINS), *requirements, cwd=REPO)
    return done, (json.loads(report.read_text())["install"] if done.returncode == 0 else None)


def pinned() -> dict:
    lines = [line.split("==") for line in PINS.read_text().splitlines() if line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version for name, version in lines}


def test_the_notebooks_install_changes_nothing_colab_has(tmp_path):
    done, report = dry_run(tmp_path, f"{REPO}[notebooks]")
    assert done.returncode == 0, done.stderr[-3000:]
    versions = {p["metadata"]["name"].lower().replace("_", "-"): p["metadata"]["version"] for p in report}
    pins = pinned()
    for name, version in versions.items():  # every package Colab has stays at Colab's version
        if name in pins:
            assert version == pins[name], name
    assert "torchattacks" not in versions and "discriminative-robustness" in versions


def test_requirements_txt_changes_nothing_colab_has(tmp_path):
    done, report = dry_run(tmp_path, "-r", str(REPO / "requirements.txt"))
    assert done.returncode == 0, done.stderr[-3000:]
    pins = pinned()
    for p in report:
        name = p["metadata"]["name"].lower().replace("_", "-")
        if name in pins:
            assert p["metadata"]["version"] == pins[name], name


def test_the_check_catches_a_downgrade(tmp_path):
    # torchattacks' metadata asks for requests~=2.25.1: against Colab's requests the resolve must fail
    done, _ = dry_run(tmp_path, "torchattacks>=3.5")
    assert done.returncode != 0 and "requests" in done.stderr
