"""Two sweeps side by side, joined on their combinations: before and after a torch upgrade, on two cards.

    python -m qco.compare outputs/sweeps/<before> outputs/sweeps/<after>

For each combination both sweeps ran, B's latency over A's with the spread of that ratio (two standard
deviations, from each side's timed calls), and whether the change is beyond it; B's peak memory over A's.
Combinations are matched by their key (the same in every sweep), not by their job folders' names."""

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional

from qco.record import Row, Status
from qco.report import aligned
from qco.sweep.aggregate import load_rows


def _memory(row: Row) -> Optional[float]:
    return row.peak_reserved_gib if row.peak_reserved_gib is not None else row.host_peak_gib


def verdict(a: Row, b: Row) -> dict:
    """B against A for one combination that ran in both."""
    ratio = b.latency_s / a.latency_s
    if min(a.latency_n or 0, b.latency_n or 0) < 2:
        return {"ratio": ratio, "noise": None, "verdict": "no spread (one timed call)"}
    # the ratio's relative spread, to first order: the two sides' relative deviations added in quadrature
    noise = 2 * ratio * math.hypot(a.latency_stdev_s / a.latency_s, b.latency_stdev_s / b.latency_s)
    if abs(ratio - 1) <= noise:
        return {"ratio": ratio, "noise": noise, "verdict": "within the noise"}
    return {"ratio": ratio, "noise": noise, "verdict": "faster" if ratio < 1 else "slower"}


def compare(rows_a: List[Row], rows_b: List[Row]) -> dict:
    done_a = {r.key: r for r in rows_a if r.status == Status.ok and r.key}
    done_b = {r.key: r for r in rows_b if r.status == Status.ok and r.key}
    joined = []
    for key in sorted(done_a.keys() & done_b.keys()):
        a, b = done_a[key], done_b[key]
        memory_a, memory_b = _memory(a), _memory(b)
        memory = memory_b / memory_a if memory_a and memory_b is not None else None
        joined.append({"key": key, "a": a, "b": b, "memory_ratio": memory, **verdict(a, b),
                       "same_setting": a.setting == b.setting})
    return {"joined": joined, "only_a": sorted(done_a.keys() - done_b.keys()),
            "only_b": sorted(done_b.keys() - done_a.keys())}


def table(result: dict) -> str:
    rows = [["combination", "A latency s", "B latency s", "B / A", "spread +-", "change", "memory B / A"]]
    for entry in result["joined"]:
        rows.append([entry["key"] + ("" if entry["same_setting"] else " (settings differ)"),
                     f"{entry['a'].latency_s:.3f}", f"{entry['b'].latency_s:.3f}", f"{entry['ratio']:.3f}",
                     "-" if entry["noise"] is None else f"{entry['noise']:.3f}", entry["verdict"],
                     "-" if entry["memory_ratio"] is None else f"{entry['memory_ratio']:.3f}"])
    return aligned(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qco.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_a", type=Path)
    parser.add_argument("sweep_b", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.sweep_a, args.sweep_b):
        if not folder.is_dir() or not list(folder.glob("*/results.json")):
            print(f"qco.compare: {folder} holds no run folder (no */results.json); fix: give two sweep folders, "
                  "e.g. outputs/sweeps/<name>", file=sys.stderr)
            return 2
    result = compare(load_rows(args.sweep_a), load_rows(args.sweep_b))
    if not result["joined"]:
        print(f"qco.compare: the two sweeps share no finished combination ({len(result['only_a'])} only in A, "
              f"{len(result['only_b'])} only in B); fix: compare sweeps of the same combinations", file=sys.stderr)
        return 1
    print(f"A: {args.sweep_a}\nB: {args.sweep_b}\n")
    print(table(result))
    for side, keys in (("A", result["only_a"]), ("B", result["only_b"])):
        if keys:
            print(f"only in {side}: {'; '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
