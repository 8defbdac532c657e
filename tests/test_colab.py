"""The notebooks' first cell in Colab: one URL for all, loud failures, and the package importable in the
same kernel. Run in a real kernel with a stand-in `google.colab` module and a local clone URL."""
import shutil
import subprocess

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel

from reproduce.colab import PLACEHOLDER, first_cell, repository_url, set_repository
from reproduce.runner import NOTEBOOKS, REPO


def test_every_notebook_carries_the_one_repository_url_and_asks_for_a_gpu():
    url = repository_url(REPO)
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        assert nb.cells[1].source == first_cell(url), name
        assert len(nb.cells[1].source.splitlines()) <= 6, name  # its logic lives once, in reproduce.colab
        assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"] == "T4", name
    readme = (REPO / "README.md").read_text()
    assert f"pip install git+{url}" in readme


def test_set_repository_writes_no_code_and_refuses_what_is_not_a_url(tmp_path):
    for part in ("notebooks", "docs", "README.md", "pyproject.toml", "CITATION.cff"):
        (shutil.copytree if part in ("notebooks", "docs") else shutil.copy)(REPO / part, tmp_path / part)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    hostile = ['https://x/a"; import os; os.system("touch PWNED"); "', "https://x/a\\", "https://x/a b",
               "https://x/a'+__import__('os').system('id')+'", "https://x/a\nimport os", "", "javascript:alert(1)"]
    for url in hostile:
        with pytest.raises(ValueError, match="not a Git URL"):
            set_repository(url, tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    # what it accepts is written as a string literal: the cell compiles and holds exactly the URL
    url = "git@github.com:someone/repo-name_2.0"
    set_repository(url, tmp_path)
    source = nbformat.read(tmp_path / "notebooks" / NOTEBOOKS[0], as_version=4).cells[1].source
    namespace = {}
    exec(compile(source.splitlines()[0], "cell", "exec"), namespace)  # the REPOSITORY line alone
    assert namespace["REPOSITORY"] == url
    import tomllib

    assert tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]["urls"]["Repository"] == url


def test_set_repository_rewrites_every_place(tmp_path):
    for part in ("notebooks", "docs", "README.md", "pyproject.toml", "CITATION.cff"):
        (shutil.copytree if part in ("notebooks", "docs") else shutil.copy)(REPO / part, tmp_path / part)
    with pytest.raises(ValueError, match="not a Git URL"):
        set_repository("my repo", tmp_path)
    set_repository("https://github.com/someone/discriminative-robustness.git", tmp_path)
    url = "https://github.com/someone/discriminative-robustness"
    assert repository_url(tmp_path) == url
    for name in NOTEBOOKS:
        nb = nbformat.read(tmp_path / "notebooks" / name, as_version=4)
        assert nb.cells[1].source == first_cell(url)
    readme = (tmp_path / "README.md").read_text()
    assert "github.com/OWNER/REPO" not in readme and f"pip install git+{url}" in readme
    assert "colab.research.google.com/github/someone/discriminative-robustness/blob/main/notebooks/01" in readme
    assert f'repository-code: "{url}"' in (tmp_path / "CITATION.cff").read_text()
    assert f"pip install git+{url}" in (tmp_path / "docs" / "usage.md").read_text()


class Kernel:
    """A real IPython kernel started in `cwd`; run(code) returns (status, text printed, error)."""

    def __init__(self, cwd):
        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=str(cwd))

    def run(self, code: str, timeout: float = 300):
        out, error = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                error.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"]["status"], "".join(out), "".join(error)

    def stop(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


FAKE_COLAB = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')"


@pytest.fixture
def colab_kernel(tmp_path):
    kernel = Kernel(tmp_path)
    assert kernel.run(FAKE_COLAB)[0] == "ok"
    yield kernel
    kernel.stop()


def test_first_cell_clones_installs_and_imports_in_the_same_kernel(tmp_path, colab_kernel):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("the repository is not a git checkout")
    status, _, error = colab_kernel.run(first_cell(str(REPO)))
    assert status == "ok", error
    status, out, error = colab_kernel.run("import os, reproduce; print(reproduce.__file__); print(os.getcwd())")
    assert status == "ok", error
    module, cwd = out.split()
    clone = (tmp_path / "reproduction").resolve()
    assert module == str(clone / "reproduce" / "__init__.py")  # the clone's package, not the one installed here
    assert cwd == str(clone / "notebooks")
    # run again (as a user re-running the cell): nothing is cloned twice
    assert colab_kernel.run(first_cell(str(REPO)))[0] == "ok"
    assert not (clone / "notebooks" / "reproduction").exists()


def test_first_cell_fails_loudly(tmp_path, colab_kernel):
    status, _, error = colab_kernel.run(first_cell(PLACEHOLDER))
    assert status == "error" and "REPOSITORY is unset: paste this repository's Git URL above" in error
    assert not (tmp_path / "reproduction").exists()  # stopped before cloning anything
    status, _, error = colab_kernel.run(first_cell(str(tmp_path / "no-such-repository")))
    assert status == "error" and "CalledProcessError" in error and "'git', 'clone'" in error


def test_a_failing_install_shows_pips_output(tmp_path, colab_kernel):
    """setup() of a clone whose requirements cannot be installed stops with pip's own words above."""
    clone = tmp_path / "clone"
    (clone / "reproduce").mkdir(parents=True)
    (clone / "notebooks").mkdir()
    shutil.copy(REPO / "reproduce" / "colab.py", clone / "reproduce" / "colab.py")
    (clone / "reproduce" / "__init__.py").write_text("")
    (clone / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\ndependencies = '
                                          '["no-such-package-of-this-name>=1"]\n[project.optional-dependencies]\n'
                                          'notebooks = []\n')
    status, out, error = colab_kernel.run(f"import sys; sys.path.insert(0, {str(clone)!r})\n"
                                          "from reproduce.colab import setup; setup()", timeout=600)
    assert status == "error" and "pip install failed; its output is above" in error
    assert "no-such-package-of-this-name" in out


def test_first_cell_does_nothing_outside_colab(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        assert kernel.run(first_cell(PLACEHOLDER))[0] == "ok"
        assert not (tmp_path / "reproduction").exists()
    finally:
        kernel.stop()



FAKE_DRIVE = """
import os, sys, types
drive = types.ModuleType("google.colab.drive")
drive.mount = lambda folder: os.makedirs(os.path.join(folder, "MyDrive"), exist_ok=True)
sys.modules["google.colab.drive"] = drive
sys.modules["google.colab"].drive = drive
"""


def test_keep_on_drive_puts_the_store_on_drive(tmp_path, colab_kernel):
    """With KEEP_ON_DRIVE, runs/ and figures/ go to the (here stand-in) Drive, so a notebook of a new
    runtime finds the models an earlier one trained."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("the repository is not a git checkout")
    assert colab_kernel.run(FAKE_DRIVE)[0] == "ok"
    drive = tmp_path / "drive"
    cell = first_cell(str(REPO)).replace("KEEP_ON_DRIVE = False", "KEEP_ON_DRIVE = True") \
        .replace("setup(KEEP_ON_DRIVE)", f"setup(KEEP_ON_DRIVE, drive={str(drive)!r})")
    status, _, error = colab_kernel.run(cell)
    assert status == "ok", error
    status, out, error = colab_kernel.run("from reproduce import start\n"
                                          "run = start('smoke', 'fashion-mnist', device='cpu', quiet=True)\n"
                                          "print(run.store.root, run.figures_root)")
    assert status == "ok", error
    shared = drive / "MyDrive" / "discriminative-robustness"
    assert out.split() == [str(shared / "runs"), str(shared / "figures")]


def test_set_repository_replaces_the_old_url_only_as_a_url_and_writes_nothing_when_a_file_is_unreadable(tmp_path):
    """A local path as the old URL ("/f") once turned docs' `runs/fashion-mnist-...` into
    `runshttps://...ashion-mnist-...`; and a notebook it could not read stopped it after pyproject.toml was
    written."""
    for part in ("notebooks", "docs", "README.md", "pyproject.toml", "CITATION.cff"):
        (shutil.copytree if part in ("notebooks", "docs") else shutil.copy)(REPO / part, tmp_path / part)
    set_repository("/f", tmp_path)
    usage = (tmp_path / "docs" / "usage.md").read_text()
    assert "runs/fashion-mnist-" in usage and "pip install git+/f" in usage
    set_repository("https://github.com/you/repo", tmp_path)
    usage = (tmp_path / "docs" / "usage.md").read_text()
    assert "runs/fashion-mnist-" in usage and "runshttps" not in usage
    assert "pip install git+https://github.com/you/repo" in usage and "git+/f" not in usage
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / "notebooks" / NOTEBOOKS[-1]).write_text("{not a notebook")
    before[tmp_path / "notebooks" / NOTEBOOKS[-1]] = b"{not a notebook"
    with pytest.raises(ValueError, match=f"{NOTEBOOKS[-1]} is not a notebook this package wrote.*nothing was written"):
        set_repository("https://github.com/them/repo", tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
