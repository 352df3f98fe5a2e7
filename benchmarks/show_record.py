"""What a GPU benchmark script prints after each row: the row's record (results.json) in a few lines, read through
qco's own reader. Usage: python benchmarks/show_record.py RUN_DIR/results.json"""

import sys

from qco.record import read_record


def _gib(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(path: str) -> int:
    try:
        r = read_record(path)
    except (OSError, ValueError) as error:
        print(f"no record: {error}")
        return 1
    print(r.status, r.reason[:400])
    if r.status != "ok":
        return 0
    t, m, store = r.timings, r.memory, r.quantized_store or {}
    print(f"latency {t.latency_s.mean:.3f} s (+- {t.latency_s.stdev:.3f}), load {t.load_s:.1f} s "
          f"({'loaded the kept quantized components' if store.get('loaded') else 'quantized at load'}"
          f"{', then kept them in %.1f s' % t.keep_s if t.keep_s is not None else ''}), place {t.place_s:.1f} s, "
          f"first call {t.first_call_s:.1f} s")
    print(f"cap {m.limit_gib} GiB; calls: peak allocated {_gib(m.peak_allocated_gib)} GiB, reserved "
          f"{_gib(m.peak_reserved_gib)} GiB; load: allocated {_gib(m.load_peak_allocated_gib)} GiB, reserved "
          f"{_gib(m.load_peak_reserved_gib)} GiB; outside the allocator {_gib(m.outside_allocator_gib)} GiB; "
          f"host {m.host_peak_gib:.1f} GiB")
    for way in ("to_gpu", "from_gpu"):
        moved = getattr(m.transfers, way) if m.transfers else None
        if moved:
            print(f"{way}: {moved.gib_per_call:.2f} GiB per call at {moved.gib_per_s or 0:.1f} GiB/s in "
                  f"{moved.copies} copies; by kind {moved.gib_by_kind}")
    if r.compile_cache:
        c = r.compile_cache
        print(f"compile store: {c.start} start from {c.folder} (load {c.load_s} s, save {c.save_s} s, saved "
              f"{c.saved}, {c.bytes} bytes); graphs: {c.graphs} made, {c.graphs_from_cache} from cache, "
              f"{c.graphs_compiled} compiled, {c.graphs_not_cacheable} not cacheable; error {c.error}")
        print("compile phases (s, nested): " + ", ".join(f"{k} {v}" for k, v in list(c.phases_s.items())[:40]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
