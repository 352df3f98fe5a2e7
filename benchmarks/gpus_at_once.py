"""Which GPU each job of a sweep ran on, and when: from the records alone (each results.json's started_at and
finished_at, and the GPU it leased). Prints a table, then the jobs that ran at once at most and the distinct GPUs
they used, and exits non-zero where two jobs that overlapped in time share a GPU (two jobs on one card would
measure neither). Usage: python benchmarks/gpus_at_once.py SWEEP_DIR"""

import sys
from pathlib import Path

from qco.record import RESULTS, read_record


def jobs(sweep: Path):
    found = []
    for path in sorted(sweep.glob(f"*/{RESULTS}")):
        record = read_record(path)
        if record.status == "ok" and record.finished_at is not None:
            gpus = [gpu.uuid or gpu.index or gpu.name for gpu in (record.environment.gpus if record.environment else [])]
            found.append((path.parent.name, record.started_at, record.finished_at, gpus))
    return found


def most_at_once(spans) -> int:
    """The most spans open at one moment (an end before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most


def main(sweep: Path) -> int:
    found = jobs(sweep)
    if not found:
        print(f"no finished job in {sweep}")
        return 1
    zero = min(start for _, start, _, _ in found)
    print("| job | GPUs | started s | finished s |")
    print("| --- | --- | --- | --- |")
    for job, start, end, gpus in found:
        print(f"| {job} | {', '.join(gpus) or '-'} | {start - zero:.1f} | {end - zero:.1f} |")
    shared = [(a[0], b[0]) for i, a in enumerate(found) for b in found[i + 1:]
              if a[1] < b[2] and b[1] < a[2] and set(a[3]) & set(b[3])]
    distinct = {gpu for _, _, _, gpus in found for gpu in gpus}
    print(f"\n{len(found)} jobs, at most {most_at_once([(s, e) for _, s, e, _ in found])} at once, "
          f"on {len(distinct)} distinct GPUs")
    for a, b in shared:
        print(f"{a} and {b} ran at once on the same GPU")
    return 1 if shared else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
