"""Image quality against a reference image of the same model, prompt and seed: PSNR and SSIM, computed
offline (no weights to download; a learned perceptual metric such as LPIPS would need one).

SSIM follows Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, on 8-bit
values, computed per RGB channel over the valid region and averaged."""

import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_VALUE = 255.0


def _array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float64)


def psnr(image, reference) -> Optional[float]:
    """Peak signal-to-noise ratio in dB; None where the images are identical (infinite)."""
    a, b = _array(image), _array(reference)
    _same_shape(a, b)
    mse = float(np.mean((a - b) ** 2))
    return None if mse == 0 else 10 * math.log10(MAX_VALUE**2 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The 2-D Gaussian window applied as two 1-D passes (it is the outer product of g with itself):
    22 products a pixel instead of 121, the same sums up to float64 rounding."""
    return F.conv2d(F.conv2d(maps, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def ssim(image, reference, device: str = "cpu") -> float:
    """On `device` (the run's; two CPU cores take about 2.5 s for a 1024x1024 image, a GPU is not timed here),
    in float64 there too, so the figure is the same anywhere."""
    a, b = _array(image), _array(reference)
    _same_shape(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    x = torch.from_numpy(a).to(device).permute(2, 0, 1)[:, None]  # C x 1 x H x W
    y = torch.from_numpy(b).to(device).permute(2, 0, 1)[:, None]
    g = _gaussian(size=min(11, x.shape[-1], x.shape[-2])).to(device)
    c1, c2 = (0.01 * MAX_VALUE) ** 2, (0.03 * MAX_VALUE) ** 2
    # the five local means in one pass over a batch of maps
    mu_x, mu_y, xx, yy, xy = _blur(torch.cat([x, y, x * x, y * y, x * y]), g).chunk(5)
    sigma_x, sigma_y, sigma_xy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return float(ssim_map.mean())


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images of different sizes cannot be compared: {a.shape} and {b.shape}")


def compare(images: List, references: List, device: str = "cpu") -> Dict[str, Optional[float]]:
    """Mean PSNR and SSIM over image pairs (a batch's images, in order); SSIM on `device`."""
    pairs = list(zip(images, references))
    psnrs = [psnr(a, b) for a, b in pairs]
    finite = [p for p in psnrs if p is not None]
    return {
        "psnr_db": sum(finite) / len(finite) if finite else None,  # None: every image identical
        "ssim": sum(ssim(a, b, device) for a, b in pairs) / len(pairs),
        "identical": all(p is None for p in psnrs),
        "images": len(pairs),
    }
