"""A sweep's compile time on its first run and on its second, row by row: what the compile store saved a sweep.
Each combination's compile time is its first call less its timed latency (the first call compiles, then makes
the same image), plus the store's own work: loading the kept artifacts before the first call (warm) and keeping
them after the calls (cold), neither of which is in any timing of the record.
Usage: python benchmarks/compile_sweep.py FIRST_SWEEP_DIR SECOND_SWEEP_DIR"""

import sys
from pathlib import Path

from qco.record import read_rows


def compile_seconds(row) -> float:
    store = row.record.compile_cache
    return row.first_call_s - row.latency_s + (store.load_s or 0.0) + (store.save_s or 0.0)


def main(first: Path, second: Path) -> int:
    before = {row.key: row for row in read_rows(first) if row.status == "ok" and row.record.compile_cache}
    after = {row.key: row for row in read_rows(second) if row.status == "ok" and row.record.compile_cache}
    print("| combination | run | start | first call s | latency s | store load / save s | graphs from cache / "
          "compiled | compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    both = sorted(before.keys() & after.keys(), key=lambda k: before[k].job)
    shared = set.intersection(*(set(before[key].overrides) for key in both)) if both else set()
    totals = [0.0, 0.0]
    for key in both:
        name = " ".join(o for o in before[key].overrides if o not in shared) or before[key].job
        for run, row in (("first", before[key]), ("second", after[key])):
            store = row.record.compile_cache
            seconds = compile_seconds(row)
            totals[run == "second"] += seconds
            print(f"| {name} | {run} | {store.start} | {row.first_call_s:.1f} | {row.latency_s:.3f} | "
                  f"{store.load_s or 0:.1f} / {store.save_s or 0:.1f} | {store.graphs_from_cache} / "
                  f"{store.graphs_compiled} | {seconds:.1f} |")
    missing = sorted(before.keys() ^ after.keys())
    if missing:
        print(f"not in both sweeps (left out): {len(missing)} combination(s)")
    if not totals[0]:
        print("no combination ran in both sweeps")
        return 1
    print(f"\n{len(both)} combination{'s' if len(both) > 1 else ''}: compile time {totals[0]:.1f} s on the first run, "
          f"{totals[1]:.1f} s on the second ({totals[1] / totals[0]:.2f} x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
