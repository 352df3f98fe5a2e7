"""One table, one picture and one grid of images from a sweep directory (also a partial one).

    python -m qco.sweep.aggregate outputs/sweeps/<name>

writes sweep.md, sweep.csv, sweep.json, pareto.png and grid.png into it and prints the table."""

import csv
import io
import json
import sys
from pathlib import Path
from typing import List, Optional

from qco.report import write_atomic, write_json_atomic, write_text_atomic

# sweep.md, for reading: what tells the rows apart
COLUMNS = ["job", "status", "cap_gb", "latency_s", "latency_stdev_s", "first_call_s", "peak_allocated_gb",
           "peak_reserved_gb", "host_peak_gb", "moved_gb_per_call", "moved_gb_s", "ssim", "psnr_db", "reason"]
GROUPS = ("model", "quant", "compile", "offload", "attention", "cache", "tweaks")
# sweep.csv and sweep.json, for joining: one column per group, and `key`, the same combination's name in every
# sweep (the job's folder name depends on the sweep's overrides); image paths relative to the sweep folder
TIDY_COLUMNS = ["key", *GROUPS, "device", "gpu", "setting", "status", "cap_gb", "latency_s", "latency_stdev_s",
                "latency_n", "first_call_s", "peak_allocated_gb", "peak_reserved_gb", "host_peak_gb", "moved_gb_per_call",
                "moved_gb_s", "ssim", "psnr_db", "identical", "pareto", "job", "images", "reason"]


def load_rows(sweep_dir: Path) -> List[dict]:
    rows = read_rows(sweep_dir)
    # label each row by what sets it apart: overrides every row shares say nothing
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["job"] = ",".join(o for o in row["overrides"] if o not in shared) or row["job"]
    return rows


def read_rows(sweep_dir: Path) -> List[dict]:
    """One row per job folder with a results.json, as recorded (an unreadable one says so)."""
    rows = []
    for path in sorted(sweep_dir.glob("*/results.json")):
        try:
            record = json.loads(path.read_text())
            row = row_of(record, path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            rows.append({"job": path.parent.name, "overrides": [], "status": "unreadable",
                         "reason": f"results.json cannot be read or is not a run's record ({type(error).__name__}: "
                                   f"{str(error)[:80]})", "dir": path.parent})
            continue
        rows.append(row)
    return rows


def row_of(record: dict, path: Path) -> dict:
    """A table row from one results.json; raises where the file is not a run's record."""
    if not isinstance(record, dict):
        raise TypeError(f"a {type(record).__name__}, not a record")
    reason = record.get("reason", "")
    if record.get("status") == "running":
        reason = (f"no end recorded: still running, or process {record.get('pid')} died without cleaning up "
                  "(a native crash or a kill); its log is in this folder")
    config = record.get("config") or {}
    row = {"job": path.parent.name, "overrides": list(record.get("overrides") or []),
           "status": record.get("status"), "reason": reason, "dir": path.parent,
           "setting": run_setting(record), "key": record.get("combination"), "cap_gb": (config.get("run") or {}).get("memory_limit_gb"),
           **{group: (config.get(group) or {}).get("name") for group in GROUPS},
           "device": (record.get("environment") or {}).get("device") or (config.get("run") or {}).get("device"),
           "gpu": (record.get("environment") or {}).get("gpu"), "images": []}
    if record.get("status") == "ok":
        t, m = record["timings"], record["memory"]
        row.update(latency_s=t["latency_s"]["mean"], latency_stdev_s=t["latency_s"]["stdev"],
                   latency_n=t["latency_s"].get("n"),
                   first_call_s=t["first_call_s"], peak_allocated_gb=m["peak_allocated_gb"],
                   peak_reserved_gb=m["peak_reserved_gb"], host_peak_gb=m["host_peak_gb"],
                   images=[f"{path.parent.name}/{name}" for name in record.get("images", [])
                           if (path.parent / name).is_file()],
                   machine=_machine(record.get("environment", {})),
                   **_quality(record.get("quality")), **_moved(m.get("transfers")),
                   reason="; ".join(n.split(" (")[0] for n in record.get("plan", {}).get("notes", [])))
        if not all(isinstance(row[key], (int, float)) for key in ("latency_s", "first_call_s")):
            raise TypeError("its timings are not numbers")
    return row


def _moved(transfers: Optional[dict]) -> dict:
    """The weights copied to the GPU per call and their speed, where the run moved weights (a GPU run)."""
    to_gpu = (transfers or {}).get("to_gpu")
    if not to_gpu:
        return {}
    return {"moved_gb_per_call": to_gpu["gb_per_call"], "moved_gb_s": to_gpu["gb_per_s"]}


def card(rows: List[dict]) -> List[dict]:
    """For each memory cap the sweep ran under, the fastest combination that ran under that cap or a smaller
    one (what fits a smaller card fits this one): a card with that much memory runs it."""
    done = [r for r in rows if r.get("status") == "ok" and r.get("cap_gb") is not None]
    caps = sorted({r["cap_gb"] for r in rows if r.get("cap_gb") is not None})
    table = []
    for cap in caps:
        fits = [r for r in done if r["cap_gb"] <= cap]
        table.append({"cap_gb": cap, "row": min(fits, key=lambda r: r["latency_s"]) if fits else None,
                      "ran": len(fits)})
    return table


def card_markdown(rows: List[dict]) -> str:
    from qco.recommend import command_line
    from qco.report import aligned

    table = [["card (GB)", "fastest that ran under this cap or a smaller one", "latency s", "peak reserved GB",
              "SSIM", "PSNR dB", "command"]]
    for entry in card(rows):
        row = entry["row"]
        if row is None:
            table.append([f"{entry['cap_gb']:g}", "nothing ran under this cap", "-", "-", "-", "-", "-"])
            continue
        psnr = "identical" if row.get("identical") else _cell(row.get("psnr_db"))
        table.append([f"{entry['cap_gb']:g}", f"{row['job']} (under {row['cap_gb']:g})", f"{row['latency_s']:.3f}",
                      _cell(row.get("peak_reserved_gb")), _cell(row.get("ssim")), psnr, f"`{command_line(row)}`"])
    return aligned(table) + "\n"


def _quality(quality: Optional[dict]) -> dict:
    """SSIM and PSNR against the reference image, where the run measured them."""
    if not quality or "ssim" not in quality:
        return {}
    return {"ssim": quality["ssim"], "psnr_db": quality["psnr_db"], "identical": quality.get("identical", False)}


def run_setting(record: dict) -> str:
    """What makes two runs comparable: the model and the run's size, steps and calls."""
    run = record.get("config", {}).get("run", {})
    if not run:
        return ""
    frames = f"x{run['frames']} frames" if run.get("frames") else ""
    return (f"{record['config']['model']['name']}, {run['width']}x{run['height']}{frames}, {run['steps']} steps, "
            f"batch {run['batch']}, {run['warmup']} warm-up + {run['repeats']} timed calls")


def _machine(env: dict) -> str:
    packages = env.get("packages", {})
    return (f"{env.get('gpu') or 'CPU'}"
            + (f" (driver {env['gpu_driver']})" if env.get("gpu_driver") else "")
            + f", torch {packages.get('torch')}, diffusers {packages.get('diffusers')}, "
              f"bitsandbytes {packages.get('bitsandbytes')}")


def header(rows: List[dict]) -> str:
    """Where and how the rows were measured, so that a table copied elsewhere still says it."""
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    settings = sorted({r["setting"] for r in rows if r.get("setting")})
    return (f"Measured on: {'; '.join(machines) or 'nothing ran'}. Runs: {'; '.join(settings)}. "
            "Latency: mean of the timed calls (s); memory in GB.\n\n")


def memory_of(row: dict) -> Optional[float]:
    """GPU peak allocated where there is one, else the host's peak (a CPU run)."""
    return row.get("peak_allocated_gb") if row.get("peak_allocated_gb") is not None else row.get("host_peak_gb")


def pareto_front(rows: List[dict]) -> List[dict]:
    """Rows no other row beats on both latency and memory."""
    done = [r for r in rows if r.get("status") == "ok"]
    return [r for r in done if not any(
        o is not r and o["latency_s"] <= r["latency_s"] and memory_of(o) <= memory_of(r)
        and (o["latency_s"] < r["latency_s"] or memory_of(o) < memory_of(r)) for o in done)]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "/").replace("\n", " / ")


def markdown(rows: List[dict]) -> str:
    from qco.report import aligned

    front = {id(r) for r in pareto_front(rows)}
    table = [COLUMNS + ["pareto"]]
    for row in rows:
        cells = {c: _cell(row.get(c)) for c in COLUMNS}
        if row.get("identical"):
            cells["psnr_db"] = "identical"  # infinite: the run is the reference, or matches it exactly
        table.append([cells[c] for c in COLUMNS] + ["*" if id(row) in front else ""])
    return aligned(table) + "\n"


def plot_pareto(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "ok"]
    front = sorted(pareto_front(rows), key=memory_of)
    gpu = any(r.get("peak_allocated_gb") is not None for r in done)
    figure, axes = plt.subplots(figsize=(9, 6))
    scored = [r for r in done if r.get("ssim") is not None]
    unscored = [r for r in done if r.get("ssim") is None]
    if scored:  # the colour is the quality: SSIM against the reference image (1 = the same image)
        points = axes.scatter([memory_of(r) for r in scored], [r["latency_s"] for r in scored],
                              c=[r["ssim"] for r in scored], cmap="viridis", vmax=1.0,
                              vmin=min(min(r["ssim"] for r in scored), 0.999), s=60, zorder=4)
        figure.colorbar(points, ax=axes, label="SSIM against the reference (nothing applied)")
    if unscored:
        axes.scatter([memory_of(r) for r in unscored], [r["latency_s"] for r in unscored], color="tab:gray",
                     label="no quality measured", zorder=2)
    axes.plot([memory_of(r) for r in front], [r["latency_s"] for r in front], "o-", color="tab:red",
              label="Pareto front", zorder=3)
    for row in done:
        axes.annotate(row["job"], (memory_of(row), row["latency_s"]), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")
    axes.set_xlabel("peak GPU memory allocated (GB)" if gpu else "peak host memory (GB)")
    axes.set_ylabel("latency per call (s)")
    failed = len(rows) - len(done)
    axes.set_title(f"latency vs memory: {len(done)} ran" + (f", {failed} refused or failed" if failed else ""))
    axes.legend()
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def image_grid(rows: List[dict], path: Path, tile: int = 256) -> None:
    from PIL import Image, ImageDraw

    done = [r for r in rows if r.get("status") == "ok" and r.get("images")]
    if not done:
        return
    columns = min(4, len(done))
    label_height = 28
    grid = Image.new("RGB", (columns * tile, -(-len(done) // columns) * (tile + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, row in enumerate(done):
        x, y = index % columns * tile, index // columns * (tile + label_height)
        with Image.open(row["dir"].parent / row["images"][0]) as image:  # relative to the sweep folder
            grid.paste(image.convert("RGB").resize((tile, tile)), (x, y))
        draw.text((x + 4, y + tile + 2), row["job"][:48], fill="black")
        draw.text((x + 4, y + tile + 14), f"{row['latency_s']:.3f} s", fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data), binary=True)


def aggregate(sweep_dir: Path) -> List[dict]:
    rows = load_rows(sweep_dir)
    table = header(rows) + markdown(rows)
    write_text_atomic(sweep_dir / "sweep.md", table)
    front = {id(r) for r in pareto_front(rows)}
    tidy = [{**{column: row.get(column) for column in TIDY_COLUMNS}, "pareto": id(row) in front,
             "images": row.get("images") or []} for row in rows]  # an unreadable record's row has no images
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TIDY_COLUMNS)
    writer.writeheader()
    writer.writerows([{**row, "images": ";".join(row["images"] or [])} for row in tidy])
    write_text_atomic(sweep_dir / "sweep.csv", text.getvalue())
    write_json_atomic(sweep_dir / "sweep.json", {"rows": tidy, "pareto": [r["job"] for r in pareto_front(rows)]})
    plot_pareto(rows, sweep_dir / "pareto.png")
    image_grid(rows, sweep_dir / "grid.png")
    print(table)
    files = "sweep.md, sweep.csv, sweep.json, pareto.png, grid.png"
    if any(r.get("cap_gb") is not None for r in rows):  # a sweep over memory caps: what each card runs
        cards = header(rows) + card_markdown(rows)
        write_text_atomic(sweep_dir / "card.md", cards)
        print(cards)
        files += ", card.md"
    print(f"sweep: {sweep_dir} ({files})")
    return rows


def main(argv: List[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m qco.sweep.aggregate SWEEP_DIR (a folder of run folders, e.g. outputs/sweeps/<name>)",
              file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if not list(folder.glob("*/results.json")):  # its files would be written into a folder that is no sweep
        print(f"qco.sweep.aggregate: {folder} holds no run folder (no */results.json), so it is not a sweep; fix: "
              "give the sweep's folder, e.g. outputs/sweeps/<name>; nothing was written", file=sys.stderr)
        return 2
    try:
        aggregate(folder)
    except OSError as error:
        print(f"qco.sweep.aggregate: {error.filename or folder}: cannot write there ({error.strerror}); fix: make the "
              "folder writable, or copy the sweep somewhere writable and aggregate the copy; the runs' results are "
              "untouched", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
