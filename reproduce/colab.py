"""The first cell of every notebook: in Colab it clones this repository and installs what Colab lacks.

The repository's URL lives in one place, `pyproject.toml` ([project.urls] Repository);
`python -m reproduce set-repository URL` writes it there and into every notebook's first cell, the
README's badges and install line and CITATION.cff, so they never disagree (tested).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

PLACEHOLDER = "https://github.com/OWNER/REPO"

FIRST_CELL = '''# Colab: clone the repository and install what Colab lacks; elsewhere this cell does nothing.
# If it asks for the repository's URL, paste it into REPOSITORY (the form field) and run it again.
REPOSITORY = "{url}"  # @param {{type:"string"}}
KEEP_ON_DRIVE = False  # @param {{type:"boolean"}} runs/ and figures/ on Google Drive: a new runtime finds them
DRIVE = "/content/drive"
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isfile("../reproduce/__init__.py"):
    if "OWNER/REPO" in REPOSITORY:
        raise RuntimeError("The repository URL is unset: paste this repository's Git URL into REPOSITORY above "
                           "(e.g. https://github.com/you/repo) and run this cell again.")
    if KEEP_ON_DRIVE:
        from google.colab import drive
        drive.mount(DRIVE)
        for name in ("runs", "figures"):  # read by reproduce.start
            os.environ[f"REPRODUCE_{{name.upper()}}"] = f"{{DRIVE}}/MyDrive/discriminative-robustness/{{name}}"
    if not os.path.isdir("reproduction/.git"):
        clone = subprocess.run(["git", "clone", "-q", REPOSITORY, "reproduction"], capture_output=True, text=True)
        if clone.returncode:
            raise RuntimeError(f"git clone {{REPOSITORY}} failed:\\n{{clone.stderr}}")
    import tomllib  # what the package and its notebooks need; Colab's own packages are never downgraded
    project = tomllib.load(open("reproduction/pyproject.toml", "rb"))["project"]
    needs = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", *needs], capture_output=True, text=True)
    if pip.returncode:
        print(pip.stdout[-4000:], pip.stderr[-4000:], sep="\\n")
        raise RuntimeError("pip install failed; its output is above")
    # the package from the clone, importable in this kernel (an install would need a restart)
    sys.path.insert(0, os.path.abspath("reproduction"))
    os.chdir("reproduction/notebooks")'''

# Colab opens the notebooks on a GPU runtime (a T4 on the free tier).
COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def first_cell(url: str) -> str:
    return FIRST_CELL.format(url=url)


def repository_url(root: Path) -> str:
    match = re.search(r'^Repository\s*=\s*"([^"]+)"', (Path(root) / "pyproject.toml").read_text(), re.M)
    if not match:
        raise ValueError(f"{root / 'pyproject.toml'} has no [project.urls] Repository")
    return match.group(1)


def set_repository(url: str, root: Path) -> list[Path]:
    """Write `url` into pyproject.toml, every notebook's first cell, the README and CITATION.cff; returns
    the files written."""
    if not re.fullmatch(r"(https://|git@|file://|/)\S+", url):
        raise ValueError(f"not a Git URL: {url!r} (e.g. https://github.com/you/repo)")
    url = url.removesuffix(".git").rstrip("/")
    root = Path(root)
    old = repository_url(root)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'Repository = "{old}"', f'Repository = "{url}"'))
    changed = [pyproject]
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        nb["cells"][1]["source"] = first_cell(url).splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        changed.append(path)
    citation = root / "CITATION.cff"
    if citation.exists():
        citation.write_text(citation.read_text().replace(f'repository-code: "{old}"', f'repository-code: "{url}"'))
        changed.append(citation)
    readme = root / "README.md"
    text = readme.read_text()
    github = url.split("github.com/")[-1] if "github.com/" in url else None
    text = text.replace(old, url)
    if github:  # the Colab badges open the notebooks from GitHub
        text = text.replace(f"colab.research.google.com/github/{old.split('github.com/')[-1]}/",
                            f"colab.research.google.com/github/{github}/")
    readme.write_text(text)
    return changed + [readme]
