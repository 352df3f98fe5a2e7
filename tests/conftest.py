"""Shared set-up: one inductor cache and one built-model cache for the whole session, so compile
tests and tiny-model builds are paid once; Hydra's global state is cleared after each compose."""

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from qco.registry import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# compiled kernels are reused across tests (and across CI runs on the same machine)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".pytest_cache" / "inductor"))
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a hub in tests
# reference images (quality) are cached per setting; runs in subprocesses find the same cache
os.environ.setdefault("QCO_REFERENCE_CACHE", str(REPO / ".pytest_cache" / "references"))
# quantized components: each test session starts without any, so a test sees the first run quantize
os.environ.setdefault("QCO_QUANTIZED_CACHE", tempfile.mkdtemp(prefix="qco-quantized-"))
# compiled artifacts, likewise: the session's first compile of a key is cold
os.environ.setdefault("QCO_COMPILE_CACHE", tempfile.mkdtemp(prefix="qco-compile-"))

register_configs()

# fixtures that run a pipeline, a sweep or a service once for their module or session: a test that asks for one
# is slow (the quick tier, `python -m pytest -m "not slow"`, leaves it out) however quick its own body is
SLOW_FIXTURES = {"small_sweep", "comparison", "two_sweeps", "runs", "default_run", "installed", "two_ranks",
                 "quality_sweep", "written", "cluster"}


# the modules that take longest, longest first: pytest-xdist hands whole modules (--dist loadscope) to the workers
# in collection order, so these start first and the short ones fill in around them, instead of a long module
# starting last on one worker while the other waits (measured: test_sweep and test_slurm, last by name, ran last)
LONGEST_FIRST = ["test_sweep", "test_slurm", "test_hostile", "test_compile_store", "test_field_options", "test_aoti",
                 "test_benchmarks", "test_closed", "test_quality", "test_compare", "test_config_safety", "test_parallel"]


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable: order within


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


SMALL_SWEEP = ["-m", "quant=none,int8", "run.repeats=1", "run.device=cpu"]


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory, models_cache) -> Path:
    """The working folder of `python -m qco` + SMALL_SWEEP, run once for the session: tests that need a finished
    sweep take a copy (copy_sweep), so none of them pays for making one or sees another's changes."""
    from tests.helpers import qco_cli

    folder = tmp_path_factory.mktemp("small_sweep")
    result = qco_cli(SMALL_SWEEP, folder, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def copy_sweep(small_sweep: Path, cwd: Path) -> Path:
    """A copy of the small sweep's outputs/ in cwd, where `python -m qco` + SMALL_SWEEP run in cwd finds it
    (the same overrides name the same folder); returns the sweep's folder."""
    import shutil

    shutil.copytree(small_sweep / "outputs", cwd / "outputs", dirs_exist_ok=True)
    (sweep,) = (cwd / "outputs" / "sweeps").iterdir()
    return sweep


@pytest.fixture
def make_cfg(models_cache):
    """Compose the packaged config with overrides, as `python -m qco <overrides>` would."""

    def _compose(*overrides: str, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_module("qco.conf", version_base="1.3"):
            return compose("config", overrides=[f"paths.models={models_cache}", *overrides],
                           return_hydra_config=hydra)

    yield _compose
    GlobalHydra.instance().clear()
