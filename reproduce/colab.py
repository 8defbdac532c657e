"""The first cell of every notebook: in Colab it clones this repository, then `setup` (here, in the
clone) installs what Colab lacks and sets the folders.

The repository's URL lives in one place, `pyproject.toml` ([project.urls] Repository);
`python -m reproduce set-repository URL` writes it there and into every notebook's first cell, the
README's badges and install line and CITATION.cff, so they never disagree (tested).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

PLACEHOLDER = "https://github.com/OWNER/REPO"
# What a repository URL may be: https, ssh (git@host:path or ssh://) or a local path / file:// URL, made of
# the characters such URLs use. No quote, backslash or space can reach a notebook's code or the TOML.
GIT_URL = re.compile(r"(https://|ssh://|git@|file://|/)[A-Za-z0-9._~:/@+%-]+")

# Six lines, the same in every notebook (tested); everything else they need is `setup`, in the clone.
FIRST_CELL = """REPOSITORY = {url}  # @param {{type:"string"}} Colab clones it; elsewhere this cell does nothing
KEEP_ON_DRIVE = False  # @param {{type:"boolean"}} runs/ and figures/ on Google Drive, found by the next runtime
import os, subprocess, sys; IN_COLAB = "google.colab" in sys.modules and not os.path.isfile("../reproduce/__init__.py")
if IN_COLAB and "OWNER/REPO" in REPOSITORY: raise RuntimeError("REPOSITORY is unset: paste this repository's Git URL above, then run this cell again.")
if IN_COLAB and not os.path.isdir("reproduction"): subprocess.run(["git", "clone", "-q", REPOSITORY, "reproduction"], check=True)
if IN_COLAB: sys.path.insert(0, os.path.abspath("reproduction")); from reproduce.colab import setup; setup(KEEP_ON_DRIVE)"""

DRIVE = "/content/drive"


def setup(keep_on_drive: bool = False, drive: str = DRIVE) -> None:
    """What the first cell leaves to the clone, in Colab: install what the package and its notebooks need
    (ranges, so nothing Colab has is downgraded; a failed install prints pip's output and stops), put
    runs/ and figures/ on Google Drive when asked (read by `reproduce.start`), and move into the clone's
    notebooks/ so that the package imports from the clone in this kernel, without a restart."""
    import importlib
    import os
    import subprocess
    import sys

    import tomllib

    clone = Path(__file__).resolve().parent.parent
    project = tomllib.loads((clone / "pyproject.toml").read_text())["project"]
    needs = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", *needs], capture_output=True, text=True)
    if pip.returncode:
        print(pip.stdout[-4000:], pip.stderr[-4000:], sep="\n")
        raise RuntimeError("pip install failed; its output is above")
    importlib.invalidate_caches()  # what pip just installed imports in this kernel
    if keep_on_drive:
        from google.colab import drive as google_drive

        google_drive.mount(drive)
        for name in ("runs", "figures"):
            os.environ[f"REPRODUCE_{name.upper()}"] = f"{drive}/MyDrive/discriminative-robustness/{name}"
    os.chdir(clone / "notebooks")


# Colab opens the notebooks on a GPU runtime (a T4 on the free tier).
COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def first_cell(url: str) -> str:
    """The notebooks' first cell for `url`, written as a string literal (json.dumps: quoted and escaped)."""
    return FIRST_CELL.format(url=json.dumps(url))


def repository_url(root: Path) -> str:
    match = re.search(r'^Repository\s*=\s*"([^"]+)"', (Path(root) / "pyproject.toml").read_text(), re.M)
    if not match:
        raise ValueError(f"{root / 'pyproject.toml'} has no [project.urls] Repository")
    return match.group(1)


def _as_url(old: str) -> re.Pattern:
    """`old` where it stands as a URL of its own: after a start, space, quote, bracket, '=' or '+' ("pip
    install git+URL") and before an end, space, quote, bracket, '/', '#', ',', ';', ':', '.git' or a full stop
    (so a local path "/f" is not replaced inside "runs/fashion-mnist")."""
    return re.compile(r"(?<![^\s\"'(\[<=+])" + re.escape(old) + r"(?=$|[\s\"')\]>/#,;:]|\.git\b|\.(?:\s|$))",
                      re.M)


def set_repository(url: str, root: Path) -> list[Path]:
    """Write `url` into pyproject.toml, every notebook's first cell, CITATION.cff, the README and docs/;
    returns the files written. Only a Git URL (GIT_URL) is accepted; the old URL is replaced only where it
    stands as a URL; every file is read and checked before any is written, so a file that cannot be read
    changes nothing."""
    from .store import atomic_write_text

    if not GIT_URL.fullmatch(url):
        raise ValueError(f"not a Git URL: {url!r} (e.g. https://github.com/you/repo; letters, digits and ._~:/@+%- "
                         "only)")
    url = url.removesuffix(".git").rstrip("/")
    root = Path(root)
    old = repository_url(root)
    as_url = _as_url(old)
    new_text = {}

    def read(path: Path) -> str:
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"set-repository: cannot read {path} ({e}); nothing was written") from None

    pyproject = root / "pyproject.toml"
    new_text[pyproject] = read(pyproject).replace(f'Repository = "{old}"', f'Repository = "{url}"')
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        try:
            nb = json.loads(read(path))
            nb["cells"][1]["source"] = first_cell(url).splitlines(keepends=True)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"set-repository: {path} is not a notebook this package wrote ({type(e).__name__}: "
                             f"{str(e)[:120]}); nothing was written") from None
        new_text[path] = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    citation = root / "CITATION.cff"
    if citation.exists():
        new_text[citation] = read(citation).replace(f'repository-code: "{old}"', f'repository-code: "{url}"')
    github = url.split("github.com/")[-1] if "github.com/" in url else None
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        # the install lines, and the Colab badges, which open the notebooks from GitHub
        text = as_url.sub(lambda _: url, read(page))
        if github and "github.com/" in old:
            text = text.replace(f"colab.research.google.com/github/{old.split('github.com/')[-1]}/",
                                f"colab.research.google.com/github/{github}/")
        new_text[page] = text
    for path, text in new_text.items():
        atomic_write_text(path, text)
    return list(new_text)
