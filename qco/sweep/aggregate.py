"""One table, one picture and one grid of images from a sweep directory (also a partial one).

    python -m qco.sweep.aggregate outputs/sweeps/<name>

writes sweep.md, sweep.csv, sweep.json, pareto.png and grid.png into it and prints the table."""

import csv
import io
import logging
import sys
from pathlib import Path
from typing import List, Optional

from qco.files import inside, write_atomic, write_json_atomic, write_text_atomic
from qco.record import RESULTS, SCHEMA_VERSION, TIDY_COLUMNS, Row, Status, read_rows
from qco.resolvers import NOT_PART_OF_THE_NAME

log = logging.getLogger(__name__)

# sweep.md, for reading: what tells the rows apart (sweep.csv and sweep.json have every column: TIDY_COLUMNS)
COLUMNS = ["job", "status", "cap_gib", "latency_s", "latency_stdev_s", "first_call_s", "compile_start", "peak_allocated_gib",
           "peak_reserved_gib", "host_peak_gib", "moved_gib_per_call", "moved_gib_s", "tflops", "peak_fraction",
           "bus_fraction", "ssim", "psnr_db", "reason"]


def load_rows(sweep_dir: Path) -> List[Row]:
    rows = read_rows(sweep_dir)
    # label each row by what sets it apart: overrides every row shares say nothing
    shared = set.intersection(*(set(r.overrides) for r in rows)) if len(rows) > 1 else set()
    for row in rows:  # sweep.*, hydra.*, paths.*: how and where it ran (a retry, a folder), not what ran
        row.job = ",".join(o for o in row.overrides if o not in shared
                           and not o.lstrip("+~").startswith(NOT_PART_OF_THE_NAME)) or row.job
    front = {id(r) for r in pareto_front(rows)}
    for row in rows:  # every reader of the rows (sweep.csv, qco.load_sweep) sees the same front
        row.pareto = id(row) in front
    return rows


def card(rows: List[Row]) -> List[dict]:
    """For each memory cap the sweep ran under, the fastest combination that ran under that cap or a smaller
    one (what fits a smaller card fits this one): a card with that much memory runs it."""
    done = [r for r in rows if r.status == Status.ok and r.cap_gib is not None]
    caps = sorted({r.cap_gib for r in rows if r.cap_gib is not None})
    table = []
    for cap in caps:
        fits = [r for r in done if r.cap_gib <= cap]
        table.append({"cap_gib": cap, "row": min(fits, key=lambda r: r.latency_s) if fits else None,
                      "ran": len(fits)})
    return table


def card_markdown(rows: List[Row]) -> str:
    from qco.recommend import command_line
    from qco.report import aligned

    table = [["card (GiB)", "fastest that ran under this cap or a smaller one", "latency s", "peak reserved GiB",
              "peak fraction", "bus fraction", "SSIM", "PSNR dB", "command"]]
    for entry in card(rows):
        row = entry["row"]
        if row is None:
            table.append([f"{entry['cap_gib']:g}", "nothing ran under this cap"] + ["-"] * 7)
            continue
        psnr = "identical" if row.identical else _cell(row.psnr_db)
        table.append([f"{entry['cap_gib']:g}", f"{row.job} (under {row.cap_gib:g})", f"{row.latency_s:.3f}",
                      _cell(row.peak_reserved_gib), _cell(row.peak_fraction), _cell(row.bus_fraction), _cell(row.ssim),
                      psnr, f"`{command_line(row)}`"])
    return aligned(table) + "\n"


def header(rows: List[Row]) -> str:
    """Where and how the rows were measured, so that a table copied elsewhere still says it."""
    machines = sorted({r.machine for r in rows if r.machine})
    settings = sorted({r.setting for r in rows if r.setting})
    return (f"Measured on: {'; '.join(machines) or 'nothing ran'}. Runs: {'; '.join(settings)}. "
            "Latency: mean of the timed calls (s); memory in GiB (2^30 bytes).\n\n")


def memory_of(row: Row) -> Optional[float]:
    """GPU peak allocated where there is one, else the host's peak (a CPU run)."""
    return row.peak_allocated_gib if row.peak_allocated_gib is not None else row.host_peak_gib


def pareto_front(rows: List[Row]) -> List[Row]:
    """Rows no other row beats on both latency and memory."""
    done = [r for r in rows if r.status == Status.ok]
    return [r for r in done if not any(
        o is not r and o.latency_s <= r.latency_s and memory_of(o) <= memory_of(r)
        and (o.latency_s < r.latency_s or memory_of(o) < memory_of(r)) for o in done)]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "/").replace("\n", " / ")


def markdown(rows: List[Row]) -> str:
    from qco.report import aligned

    table = [COLUMNS + ["pareto"]]
    for row in rows:
        cells = {c: _cell(getattr(row, c)) for c in COLUMNS}
        if row.identical:
            cells["psnr_db"] = "identical"  # infinite: the run is the reference, or matches it exactly
        table.append([cells[c] for c in COLUMNS] + ["*" if row.pareto else ""])  # marked by load_rows
    return aligned(table) + "\n"


def plot_pareto(rows: List[Row], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = pareto_figure(rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


LABEL_CHARS = 40  # a point's label; the table has the whole name


def pareto_figure(rows: List[Row]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    done = [r for r in rows if r.status == Status.ok]
    front = sorted(pareto_front(rows), key=memory_of)
    gpu = any(r.peak_allocated_gib is not None for r in done)
    figure, axes = plt.subplots(figsize=(9, 6))
    scored = [r for r in done if r.ssim is not None]
    unscored = [r for r in done if r.ssim is None]
    if scored:  # the colour is the quality: SSIM against the reference image (1 = the same image)
        points = axes.scatter([memory_of(r) for r in scored], [r.latency_s for r in scored],
                              c=[r.ssim for r in scored], cmap="viridis", vmax=1.0,
                              vmin=min(min(r.ssim for r in scored), 0.999), s=60, zorder=4)
        bar = figure.colorbar(points, ax=axes, pad=0.02)
        # plain ticks: near 1.0 matplotlib would put an offset ("+9.99e-1") over the bar, onto its title
        bar.formatter = ScalarFormatter(useOffset=False)
        bar.update_ticks()
        bar.set_label("SSIM against the reference (nothing applied)", labelpad=10)
    if unscored:
        axes.scatter([memory_of(r) for r in unscored], [r.latency_s for r in unscored], color="tab:gray",
                     label="no quality measured", zorder=2)
    axes.plot([memory_of(r) for r in front], [r.latency_s for r in front], "o-", color="tab:red",
              label="Pareto front", zorder=3)
    axes.margins(x=0.08, y=0.1)
    figure.canvas.draw()  # the limits the points set, so that each label can be turned towards the inside
    (left, right), (bottom, top) = axes.get_xlim(), axes.get_ylim()
    for row in done:
        x, y = memory_of(row), row.latency_s
        east, north = x < (left + right) / 2, y < (bottom + top) / 2
        label = row.job if len(row.job) <= LABEL_CHARS else row.job[:LABEL_CHARS - 1] + "…"
        axes.annotate(label, (x, y), fontsize=7, xytext=(4 if east else -4, 4 if north else -4),
                      textcoords="offset points", ha="left" if east else "right",
                      va="bottom" if north else "top")
    axes.set_xlabel("peak GPU memory allocated (GiB)" if gpu else "peak host memory (GiB)")
    axes.set_ylabel("latency per call (s)")
    failed = len(rows) - len(done)
    axes.set_title(f"latency vs memory: {len(done)} ran" + (f", {failed} refused or failed" if failed else ""))
    axes.legend()
    axes.grid(alpha=0.3)
    return figure


def image_grid(rows: List[Row], path: Path, tile: int = 256) -> None:
    from PIL import Image, ImageDraw

    done = [r for r in rows if r.status == Status.ok and r.images]
    if not done:
        return
    columns = min(4, len(done))
    label_height = 28
    grid = Image.new("RGB", (columns * tile, -(-len(done) // columns) * (tile + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, row in enumerate(done):
        x, y = index % columns * tile, index // columns * (tile + label_height)
        image = _tile(row.dir.parent, row.images[0], tile)
        if image is not None:
            grid.paste(image, (x, y))
        draw.text((x + 4, y + tile + 2), row.job[:48], fill="black")
        draw.text((x + 4, y + tile + 14), f"{row.latency_s:.3f} s", fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


MAX_IMAGE_SIDE = 16384  # pixels: more than any image a run writes; a larger one is not read


def _tile(sweep_dir: Path, name: str, tile: int):
    """A job's image shrunk to a tile, or None (logged, naming the file) where it is not one to read: a link out of
    the sweep folder, not an image, or one that declares more pixels than a run writes."""
    from PIL import Image

    path = sweep_dir / name
    if not inside(str(path), str(sweep_dir)):
        log.warning("%s: leads outside the sweep folder (a link?); not read into grid.png", path)
        return None
    try:
        with Image.open(path) as image:  # reads the header only: the declared size comes first
            if max(image.size) > MAX_IMAGE_SIDE:
                log.warning("%s: declares %dx%d pixels, more than a run writes; not read into grid.png", path,
                            *image.size)
                return None
            return image.convert("RGB").resize((tile, tile))
    except Image.DecompressionBombError:  # PIL's own bound on the declared size, past MAX_IMAGE_SIDE's
        log.warning("%s: declares more pixels than a run writes; not read into grid.png", path)
        return None
    except (OSError, ValueError) as error:
        log.warning("%s: not an image qco can read (%s); left out of grid.png", path, type(error).__name__)
        return None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data), binary=True)


def aggregate(sweep_dir: Path) -> List[Row]:
    rows = load_rows(sweep_dir)
    table = header(rows) + markdown(rows)
    write_text_atomic(sweep_dir / "sweep.md", table)
    tidy = [row.tidy() for row in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TIDY_COLUMNS)
    writer.writeheader()
    writer.writerows([{**row, "images": ";".join(row["images"] or [])} for row in tidy])
    write_text_atomic(sweep_dir / "sweep.csv", text.getvalue())
    write_json_atomic(sweep_dir / "sweep.json", {"schema_version": SCHEMA_VERSION, "rows": tidy,
                                                  "pareto": [r.job for r in rows if r.pareto]})
    plot_pareto(rows, sweep_dir / "pareto.png")
    image_grid(rows, sweep_dir / "grid.png")
    print(table)
    files = "sweep.md, sweep.csv, sweep.json, pareto.png, grid.png"
    if any(r.cap_gib is not None for r in rows):  # a sweep over memory caps: what each card runs
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
    if not list(folder.glob(f"*/{RESULTS}")):  # its files would be written into a folder that is no sweep
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
