"""The card's install files agree with pyproject.toml: requirements.txt (the notebooks install) and
environment.yml (conda, for JupyterLab)."""
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_is_the_core_and_the_notebooks_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "-e .[notebooks]" in lines  # the package itself, with the extra the notebooks need
    listed = [line for line in lines if not line.startswith("-")]
    assert sorted(listed) == sorted(wanted), "requirements.txt and pyproject.toml disagree"
    assert len({_name(r) for r in listed}) == len(listed)  # each package once


def test_environment_yml_installs_the_same_extra():
    text = (REPO / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*-e \.\[notebooks\]\s*$", text, re.M)
    python = re.search(r"python>=(\d+\.\d+)", text).group(1)
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == f">={python}"
