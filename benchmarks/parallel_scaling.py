"""One image on several GPUs: each row of a sweep over parallel.degree beside the degree-1 row of the same other
settings, as a latency ratio and as PSNR / SSIM of its image against the degree-1 image (the split changes the
order of floating-point sums, not the work). Usage: python benchmarks/parallel_scaling.py SWEEP_DIR"""

import sys
from pathlib import Path

from PIL import Image

from qco.quality import compare
from qco.record import read_rows


def main(sweep: Path) -> int:
    rows = [row for row in read_rows(sweep) if row.status == "ok"]
    groups = {}
    for row in rows:
        degree = next((int(o.split("=")[1]) for o in row.overrides if o.startswith("parallel.degree=")), 1)
        others = tuple(sorted(o for o in row.overrides if not o.startswith("parallel.degree=")))
        groups.setdefault(others, {})[degree] = row
    print("| settings | degree | latency_s | x degree 1 | first_call_s | PSNR dB vs degree 1 | SSIM vs degree 1 | GPUs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for others, by_degree in sorted(groups.items()):
        base = by_degree.get(1)
        for degree, row in sorted(by_degree.items()):
            ratio = f"{row.latency_s / base.latency_s:.3f}" if base else "-"
            quality = {"psnr_db": None, "ssim": None, "identical": False}
            if base:
                quality = compare([Image.open(sweep / row.job / "image_0.png")],
                                  [Image.open(sweep / base.job / "image_0.png")])
            psnr = "identical" if quality["identical"] else (f"{quality['psnr_db']:.1f}" if quality["psnr_db"] else "-")
            ssim = f"{quality['ssim']:.4f}" if quality["ssim"] is not None else "-"
            print(f"| {' '.join(others)} | {degree} | {row.latency_s:.3f} | {ratio} | {row.first_call_s:.1f} | "
                  f"{psnr} | {ssim} | {row.gpu_index or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
