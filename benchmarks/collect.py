"""Gather the results.json of run directories under a folder into one Markdown table and one JSON.
Usage: python benchmarks/collect.py DIR  (writes DIR/table.md and DIR/table.json)"""

import json
import sys
from pathlib import Path


def row(path: Path) -> dict:
    record = json.loads(path.read_text())
    run = record["config"]["run"]
    out = {"run": path.parent.name, "combination": record.get("combination"), "status": record.get("status"),
           "reason": record.get("reason", ""), "setting": f"{run['width']}x{run['height']}, {run['steps']} steps, "
           f"batch {run['batch']}, {run['warmup']} warm-up + {run['repeats']} timed calls"}
    if record.get("status") == "ok":
        t, m = record["timings"], record["memory"]
        out.update(latency_s=t["latency_s"]["mean"], latency_stdev_s=t["latency_s"]["stdev"],
                   first_call_s=t["first_call_s"], load_s=t["load_s"],
                   peak_allocated_gb=m["peak_allocated_gb"], peak_reserved_gb=m["peak_reserved_gb"],
                   host_peak_gb=m["host_peak_gb"], adjustments=[n.split(" (")[0] for n in record["plan"]["notes"]],
                   gpu=record["environment"]["gpu"], packages=record["environment"]["packages"])
    return out


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def main(folder: str) -> None:
    root = Path(folder)
    rows = [row(p) for p in sorted(root.glob("*/results.json"))]
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), "none (CPU)")
    settings = sorted({r["setting"] for r in rows})
    lines = [f"Card: {gpu}. Runs: {'; '.join(settings)}. Latency: mean of the timed calls.", "",
             "| run | combination | status | latency s | first call s | load s | peak alloc GB | peak reserved GB "
             "| host peak GB | adjustments / reason |", "|" + "---|" * 10]
    for r in rows:
        detail = "; ".join(r.get("adjustments", [])) or r.get("reason", "")
        lines.append(f"| {r['run']} | {r['combination']} | {r['status']} | {fmt(r.get('latency_s'), 3)} "
                     f"| {fmt(r.get('first_call_s'), 1)} | {fmt(r.get('load_s'), 1)} | {fmt(r.get('peak_allocated_gb'))} "
                     f"| {fmt(r.get('peak_reserved_gb'))} | {fmt(r.get('host_peak_gb'))} | {detail.replace('|', '/')[:400]} |")
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "table.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
