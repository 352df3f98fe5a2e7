"""Image quality: the metrics on image pairs whose answers are known, the reference really made by a
run with nothing applied and cached, the figures in results.json, the sweep table and its picture, and
the recommend command on a real sweep."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from qco.quality import compare, psnr, ssim
from tests.helpers import table_rows


def _noise_pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 48, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_identical_images():
    a, _ = _noise_pair()
    assert psnr(a, a) is None  # infinite
    assert ssim(a, a) == pytest.approx(1.0)
    assert compare([Image.fromarray(a)], [Image.fromarray(a)])["identical"] is True


def test_constant_images_have_closed_form_values():
    a, b = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 110, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE 100
    c1 = (0.01 * 255) ** 2  # no variance: SSIM is the luminance term alone
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))


def test_noise_pair_matches_scikit_image():
    # reference values from scikit-image 0.26: peak_signal_noise_ratio(a, b, data_range=255) and
    # structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    # data_range=255, channel_axis=2) on this same seeded pair
    a, b = _noise_pair()
    assert psnr(a, b) == pytest.approx(23.642400685692287, abs=1e-9)
    assert ssim(a, b) == pytest.approx(0.9736766803107321, abs=1e-9)


def test_two_one_dimensional_passes_give_the_two_dimensional_windows_figure():
    """SSIM blurs with the 11x11 window as two 1-D passes (6 x faster on a CPU); its figure is the 2-D
    window's, computed here the way qco did before, to within float64 rounding."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    x = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1)[:, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, window), F.conv2d(y, window)
    vx, vy = F.conv2d(x * x, window) - mx**2, F.conv2d(y * y, window) - my**2
    cov = F.conv2d(x * y, window) - mx * my
    old = float((((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())
    assert ssim(a, b) == pytest.approx(old, abs=1e-12)


def test_an_inverted_image_scores_far_below_a_noisy_one():
    a, b = _noise_pair()
    assert ssim(a, 255 - a) < 0 < 0.9 < ssim(a, b)


def test_images_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="different sizes"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 16, 3)))


# --- the reference, made for real on the tiny model ---

def _run(make_cfg, tmp_path, references, *overrides):
    from qco.runner import run

    cfg = make_cfg(*overrides, "run.repeats=1", "run.device=cpu", f"paths.references={references}")
    return run(cfg, tmp_path, list(overrides)), cfg


@pytest.mark.slow
def test_the_reference_is_a_run_with_nothing_applied_made_once(make_cfg, tmp_path):
    references = tmp_path / "references"
    quantized, _ = _run(make_cfg, tmp_path / "int8", references, "quant=torchao_int8wo")
    quality = quantized.quality
    folder = references / quality.reference.split("/")[-1]
    made = json.loads((folder / "reference.json").read_text())
    assert made["made_by"] == "a run of qco" and made["run"]["steps"] == 2
    assert 0 < quality.ssim < 1 and quality.psnr_db > 10 and not quality.identical
    assert quality.seconds > 0  # recorded apart: quality is measured after the timed calls

    plain, _ = _run(make_cfg, tmp_path / "bf16", references, "quant=none")
    assert plain.quality.reference == quality.reference  # the same setting: the cached reference
    assert plain.quality.identical is True and plain.quality.ssim == pytest.approx(1.0)
    # the cached reference is pixel for pixel what a run with nothing applied makes
    made_by_run = np.asarray(Image.open(tmp_path / "bf16" / "image_0.png"))
    assert np.array_equal(made_by_run, np.asarray(Image.open(folder / "image_0.png")))
    assert json.loads((folder / "reference.json").read_text()) == made  # not made again


def test_a_run_with_nothing_applied_fills_the_cache_and_settings_key_it(make_cfg, tmp_path):
    references = tmp_path / "references"
    first, _ = _run(make_cfg, tmp_path / "a", references)
    other_seed, _ = _run(make_cfg, tmp_path / "b", references, "run.seed=1")
    assert first.quality.reference != other_seed.quality.reference
    for record in (first, other_seed):
        made = json.loads((references / record.quality.reference.split("/")[-1] / "reference.json").read_text())
        assert made["made_by"] == "this run" and record.quality.identical is True


def test_quality_can_be_turned_off(make_cfg, tmp_path):
    references = tmp_path / "references"
    record, _ = _run(make_cfg, tmp_path / "a", references, "quant=torchao_int8wo", "run.quality=false")
    assert record.quality is None and not references.exists()


def test_a_reference_that_cannot_be_made_leaves_the_measurement_standing(make_cfg, tmp_path):
    references = tmp_path / "references"
    references.write_text("a file where the cache folder should be")
    record, _ = _run(make_cfg, tmp_path / "a", references, "quant=torchao_int8wo")
    assert record.status == "ok" and record.timings.latency_s.n == 1
    assert record.quality.error and record.quality.ssim is None


# --- the sweep's table and picture, and the recommend command, on a real sweep ---

@pytest.fixture(scope="module")
def quality_sweep(tmp_path_factory, models_cache):
    import subprocess
    import sys

    from tests.conftest import REPO

    sweep = tmp_path_factory.mktemp("sweep")
    result = subprocess.run(
        [sys.executable, "-m", "qco", "-m", "quant=none,torchao_int8wo", "run.repeats=1", "run.device=cpu",
         f"paths.models={models_cache}", f"paths.references={sweep / 'references'}", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_sweep_table_has_quality_and_the_picture_is_coloured_by_it(quality_sweep):
    table = (quality_sweep / "sweep.md").read_text()
    header, *cells = table_rows(table)
    assert header[header.index("ssim") + 1] == "psnr_db"
    rows = {r["job"]: r for r in json.loads((quality_sweep / "sweep.json").read_text())["rows"]}
    assert rows["quant=none"]["ssim"] == pytest.approx(1.0) and rows["quant=none"]["identical"]
    assert 0 < rows["quant=torchao_int8wo"]["ssim"] < 1
    assert "identical" in [row[header.index("psnr_db")] for row in cells]
    picture = Image.open(quality_sweep / "pareto.png")
    pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    # viridis' yellow end (SSIM 1) is drawn, and a colour bar beside the axes
    assert (np.abs(pixels.astype(int) - [253, 231, 37]).sum(axis=1) < 40).sum() > 50


def _recommend(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "qco.recommend", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_recommend_names_the_fastest_that_fits_and_its_command(quality_sweep):
    from qco.recommend import recommend
    from qco.sweep.aggregate import read_rows

    rows = read_rows(quality_sweep)
    fastest = min(rows, key=lambda r: r.latency_s)
    result = _recommend(quality_sweep, "--memory", "host", "--memory-gib", 100)
    assert result.returncode == 0, result.stderr
    assert f"python -m qco {' '.join(fastest.overrides)}" in result.stdout
    assert f"--config-dir {fastest.dir} --config-name rerun" in result.stdout
    # a quality floor only the reference meets picks the reference, whatever its speed
    best, _ = recommend(rows, 100, "host", min_ssim=0.999999)
    assert best.job == "quant=none" or "quant=none" in best.overrides
    floored = _recommend(quality_sweep, "--memory", "host", "--memory-gib", 100, "--min-ssim", 0.999999)
    assert "quant=none" in floored.stdout.splitlines()[2]


def test_recommend_says_in_one_line_when_nothing_fits(quality_sweep):
    result = _recommend(quality_sweep, "--memory", "host", "--memory-gib", 0.001)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fits 0.001 GiB" in lines[0] and "the leanest is" in lines[0] and "fix:" in lines[0]
    missing = _recommend(quality_sweep / "nope", "--memory-gib", 1)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


@pytest.mark.parametrize("flags,needle", [
    (["--memory-gib", "nan"], "--memory-gib nan"), (["--memory-gib", "-4"], "--memory-gib -4.0"),
    (["--memory-gib", "inf"], "--memory-gib inf"),
    (["--memory-gib", "12", "--min-ssim", "nan"], "--min-ssim nan"),
    (["--memory-gib", "12", "--min-psnr=-inf"], "--min-psnr -inf"),
])
def test_recommend_refuses_budgets_and_floors_that_are_not_numbers(flags, needle, tmp_path):
    """NaN compares false with everything: a NaN floor or budget would silently filter every row."""
    result = _recommend(tmp_path, *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0] and "fix:" in lines[0]


@pytest.mark.slow
def test_a_damaged_reference_is_made_again(make_cfg, tmp_path):
    references = tmp_path / "references"
    first, _ = _run(make_cfg, tmp_path / "a", references, "quant=torchao_int8wo")
    folder = references / first.quality.reference.split("/")[-1]
    (folder / "image_0.png").unlink()  # cut short after it was made
    again, _ = _run(make_cfg, tmp_path / "b", references, "quant=torchao_int8wo")
    assert again.quality.ssim == pytest.approx(first.quality.ssim)
    assert (folder / "image_0.png").is_file()
