"""The fastest combination of a sweep that fits a memory budget (and a minimum quality), with the
command line that runs it.

    python -m qco.recommend outputs/sweeps/<name> --memory-gib 12
    python -m qco.recommend outputs/sweeps/<name> --memory-gib 12 --min-ssim 0.9 --min-psnr 25

Memory is the peak allocated GPU memory by default, host memory for a sweep that ran on the CPU (which has
host memory only); --memory reserved or host chooses. A run made under a memory cap (run.memory_limit_gib,
experiment=fit_card) fits a budget at least as large as its cap: "my card has N GiB" (a "24 GB" card has
24 GiB, 2^30 bytes each). Quality is each run's SSIM and PSNR against the reference image of the same model,
prompt and seed made with nothing applied (qco/stores/references.py)."""

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from qco.record import Row, Status, read_rows

MEMORY = ("allocated", "reserved", "host")  # which peak: Row.memory_gib


def _quality_ok(row: Row, min_ssim: Optional[float], min_psnr: Optional[float]) -> bool:
    if min_ssim is not None and (row.ssim is None or row.ssim < min_ssim):
        return False
    if min_psnr is not None and not row.identical and (row.psnr_db is None or row.psnr_db < min_psnr):
        return False
    return True


def recommend(rows: List[Row], memory_gib: float, memory: str = "allocated", min_ssim: Optional[float] = None,
              min_psnr: Optional[float] = None) -> Tuple[Optional[Row], List[Row]]:
    """The fastest measured row within the budget and quality floor, and the measured rows."""
    measured = [r for r in rows if r.status == Status.ok and r.memory_gib(memory) is not None]
    fits = [r for r in measured if fits_in(r, memory_gib, memory) and _quality_ok(r, min_ssim, min_psnr)]
    return (min(fits, key=lambda r: r.latency_s) if fits else None), measured


def fits_in(row: Row, memory_gib: float, memory: str) -> bool:
    """A row run under a memory cap (experiment=fit_card) fits where its cap does: the cap is the proof, the
    allocator could take no more. Without a cap, its measured peak must fit."""
    if row.cap_gib is not None:
        return row.cap_gib <= memory_gib
    return row.memory_gib(memory) <= memory_gib


def command_line(row: Row) -> str:
    return " ".join(["python -m qco", *(shlex.quote(o) for o in row.overrides)])


def _describe(row: Row, memory: str) -> str:
    quality = ""
    if row.ssim is not None:
        psnr = "identical" if row.identical else f"PSNR {row.psnr_db:.1f} dB"
        quality = f", SSIM {row.ssim:.3f}, {psnr}"
    cap = f" (ran under a cap of {row.cap_gib:g} GiB)" if row.cap_gib is not None else ""
    return f"latency {row.latency_s:.3f} s, peak {memory} {row.memory_gib(memory):.2f} GiB{cap}{quality}"


# what takes less memory, leanest last: suggested where a sweep has not tried it yet
LEANER = (("quant", "nf4"), ("offload", "model"), ("offload", "group_leaf"), ("offload", "sequential"))


def _leaner_advice(rows: List[Row]) -> str:
    """', or sweep <options the sweep has not tried>', or '' where it tried them all."""
    tried = {(group, getattr(row, group)) for row in rows for group in ("quant", "offload")}
    untried = [f"{group}={option}" for group, option in LEANER if (group, option) not in tried]
    return f", or sweep leaner options ({', '.join(untried)})" if untried else \
        " (the sweep tried every leaner quant and offload option qco has)"


def _bad_flags(args) -> List[str]:
    """NaN passes every comparison as false, so a NaN budget or floor would filter silently."""
    bad = []
    if not (math.isfinite(args.memory_gib) and args.memory_gib > 0):
        bad.append(f"--memory-gib {args.memory_gib}: must be a finite number above 0; fix: e.g. --memory-gib 12")
    if args.min_ssim is not None and not (math.isfinite(args.min_ssim) and -1 <= args.min_ssim <= 1):
        bad.append(f"--min-ssim {args.min_ssim}: SSIM is a number from -1 to 1; fix: e.g. --min-ssim 0.9")
    if args.min_psnr is not None and not math.isfinite(args.min_psnr):
        bad.append(f"--min-psnr {args.min_psnr}: must be a finite number of dB; fix: e.g. --min-psnr 25")
    return bad


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qco.recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--memory-gib", type=float, required=True,
                        help="the memory budget, in GiB (2^30 bytes: a \"24 GB\" card has 24 GiB)")
    parser.add_argument("--memory", choices=MEMORY, default=None,
                        help="which peak the budget applies to (default: allocated GPU memory, or host memory for a "
                             "sweep that ran on the CPU)")
    parser.add_argument("--min-ssim", type=float, default=None, help="e.g. 0.9 (1.0: identical to the reference)")
    parser.add_argument("--min-psnr", type=float, default=None, help="in dB, e.g. 25")
    given = sys.argv[1:] if argv is None else list(argv)
    old = next((i for i, a in enumerate(given) if a.split("=")[0] == "--memory-gb"), None)
    if old is not None:
        from qco.config import GIB_WHY

        value = given[old].partition("=")[2] or (given[old + 1] if old + 1 < len(given) else "N")
        print(f"qco.recommend: --memory-gb: renamed --memory-gib ({GIB_WHY}); fix: --memory-gib {value}",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    bad = _bad_flags(args)
    if bad:
        for line in bad:
            print(f"qco.recommend: {line}", file=sys.stderr)
        return 2
    if not args.sweep_dir.is_dir():
        print(f"qco.recommend: {args.sweep_dir} is not a folder; fix: give a sweep folder "
              "(outputs/sweeps/<name>) or any folder of run folders", file=sys.stderr)
        return 2
    rows = read_rows(args.sweep_dir)
    if args.memory is None:  # a CPU sweep has host memory only: the budget is of that
        gpu = any(r.status == Status.ok and r.peak_allocated_gib is not None for r in rows)
        args.memory = "allocated" if gpu or not rows else "host"
    peak = f"peak {args.memory}"
    best, measured = recommend(rows, args.memory_gib, args.memory, args.min_ssim, args.min_psnr)
    floor = "".join([f" and SSIM >= {args.min_ssim}" if args.min_ssim is not None else "",
                     f" and PSNR >= {args.min_psnr} dB" if args.min_psnr is not None else ""])
    if best is None:
        if not measured:
            print(f"qco.recommend: no finished run in {args.sweep_dir} has a {peak} memory; fix: run a sweep there "
                  "first, or choose --memory host for CPU runs", file=sys.stderr)
            return 1
        leanest = min(measured, key=lambda r: r.memory_gib(args.memory))
        print(f"qco.recommend: no combination in {args.sweep_dir} fits {args.memory_gib} GiB ({peak}){floor}; the "
              f"leanest is {leanest.job} at {leanest.memory_gib(args.memory):.2f} GiB; fix: raise --memory-gib"
              f"{' or lower the quality floor' if floor else ''}{_leaner_advice(rows)}", file=sys.stderr)
        return 1
    print(f"fastest within {args.memory_gib} GiB ({peak}){floor}, of {len(measured)} measured: {best.job}")
    print(f"  {_describe(best, args.memory)}")
    print(f"  run it:            {command_line(best)}")
    print(f"  exactly as it ran: python -m qco --config-dir {best.dir} --config-name rerun")
    return 0

if __name__ == "__main__":
    sys.exit(main())
