"""qco installed as a released package is installed: a wheel built from the checkout, put into a fresh virtual
environment without the editable hook, and started from a folder outside the checkout. A package left out of
the wheel (qco.safety once was) shows here as the ModuleNotFoundError a user would meet."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a source tree holds that a wheel never should be built from
NOT_SOURCE = shutil.ignore_patterns(".git", "outputs", "multirun", ".whl", "build", "*.egg-info", ".pytest_cache",
                                    "__pycache__", "benchmarks")

pytestmark = pytest.mark.slow


def run(command, cwd, env=None, timeout=600):
    result = subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding qco's wheel and nothing of the checkout: its python and its qco script."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so that building writes nothing into the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
         source], cwd=root)
    (wheel,) = (root / "dist").glob("qco-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root)
                   .stdout.strip())
    # the dependencies (torch and the rest, gigabytes) come from this interpreter's site-packages as a plain path:
    # a path line in a .pth does not run that folder's own .pth files, so the editable hook of the checkout's
    # qco (a meta-path finder installed by one of them) never loads, and `import qco` can only find the wheel
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=root)
    return python, venv / "bin" / "qco", root


def test_the_wheel_holds_every_file_of_the_package(installed):
    """Every Python and YAML file under qco/ (conf/ through its link) is in the wheel."""
    import zipfile

    _, _, root = installed
    (wheel,) = (root / "dist").glob("qco-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "qco"
    sources = {f"qco/{(Path(folder) / name).relative_to(package).as_posix()}"
               for folder, _, names in os.walk(package, followlinks=True)  # rglob does not enter qco/conf's link
               for name in names if name.endswith((".py", ".yaml")) and "__pycache__" not in folder}
    assert "qco/safety/check.py" in sources and "qco/conf/config.yaml" in sources  # the walk went through the link
    sources.add("hydra_plugins/qco_launcher/__init__.py")  # qco's SLURM launcher, where Hydra takes launchers from
    assert sources <= packaged, sorted(sources - packaged)


def test_the_installed_wheel_runs_from_another_folder(installed, tmp_path, models_cache):
    python, script, root = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    where = run([python, "-c", "import qco; print(qco.__file__)"], cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).is_relative_to(root / "venv"), where  # the wheel's qco, not the checkout's

    help_text = run([script, "--help"], cwd=elsewhere, env=env).stdout
    assert "quant" in help_text and "offload" in help_text, help_text[:2000]

    run([python, "-m", "qco", "run.steps=2", "run.repeats=1"], cwd=elsewhere, env=env)
    (record,) = (elsewhere / "outputs").rglob("results.json")
    assert '"status": "ok"' in record.read_text()
    assert (record.parent / "image_0.png").is_file()
