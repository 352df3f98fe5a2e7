"""qco against hand-written diffusers, side by side, in one run on one machine.

    python benchmarks/compare.py OUT_DIR                  # every row, FLUX.1-dev architecture, cuda
    python benchmarks/compare.py OUT_DIR --rows bf16,nf4  # some rows
    python benchmarks/compare.py --reproduce RUN_A RUN_B  # how far a second run is from the first

Each row runs twice, each time in a fresh process: once through qco (`python -m qco ...`) and once
through benchmarks/plain_diffusers.py, which does the same with diffusers alone. The order alternates
from row to row, so a drift of the machine does not always fall on the same side. The table gives
qco / plain for the median latency and for peak allocated memory (goals: 1.02 and 1.01), reserved
memory and host memory beside them, and the first call apart. A rerun of the same command skips the
rows already measured in OUT_DIR, so a run cut short by a time limit goes on where it stopped.

Writes OUT_DIR/compare.json and compare.md; qco's runs are a sweep folder (OUT_DIR/qco, with its own
table and Pareto picture from `python -m qco.sweep.aggregate`), the plain runs OUT_DIR/plain/ROW.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from qco.record import Record, Status, read_record

HERE = Path(__file__).resolve().parent
LATENCY_GOAL, MEMORY_GOAL = 1.02, 1.01


@dataclass
class Row:
    title: str
    qco: List[str]  # overrides of `python -m qco`
    plain: List[str]  # arguments of plain_diffusers.py meaning the same


ROWS: Dict[str, Row] = {
    "bf16": Row("bf16 baseline", [], []),
    "nf4": Row("seed 1: nf4", ["quant=nf4"], ["--quant", "nf4"]),
    "nf4_compile": Row("seed 2: nf4 + compile", ["quant=nf4", "compile=max_autotune"],
                       ["--quant", "nf4", "--compile", "max-autotune"]),
    # the design card's example is this same combination: `quant=nf4 compile=max_autotune offload=model`
    "nf4_compile_model": Row("seed 3 = the card's example: nf4 + compile + model offload",
                             ["quant=nf4", "compile=max_autotune", "offload=model"],
                             ["--quant", "nf4", "--compile", "max-autotune", "--offload", "model"]),
    "nf4_group_block": Row("nf4 + group offload (block level)", ["quant=nf4", "offload=group_block"],
                           ["--quant", "nf4", "--offload", "group_block"]),
    "nf4_group_leaf": Row("nf4 + group offload (leaf level)", ["quant=nf4", "offload=group_leaf"],
                          ["--quant", "nf4", "--offload", "group_leaf"]),
    "bf16_regional": Row("bf16 + regional compile", ["compile=regional"], ["--compile", "regional"]),
}


def run_logged(command: List[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Comparison:
    def __init__(self, out: Path, args):
        self.out, self.args = out, args
        self.configs: Dict[str, dict] = {}  # each row's composed config, composed once

    def overrides(self, name: str) -> List[str]:
        a = self.args
        return [f"model={a.model}", f"run.device={a.device}", f"run.warmup={a.warmup}",
                f"run.repeats={a.repeats}", *a.run, *ROWS[name].qco]

    def resolved(self, name: str) -> dict:
        """The config qco will run with (composed here as qco composes it), for the plain side to copy."""
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from qco.registry import register_configs

        if name not in self.configs:
            register_configs()
            GlobalHydra.instance().clear()
            with initialize_config_module("qco.conf", version_base="1.3"):
                cfg = compose("config", overrides=self.overrides(name))
            self.configs[name] = OmegaConf.to_container(cfg, resolve=True)
        return self.configs[name]

    def source(self, cfg: dict) -> str:
        """The folder (or hub id) qco loads; the plain script loads the same."""
        from omegaconf import OmegaConf

        from qco.stores.models import built_folder

        model = OmegaConf.create(cfg["model"])
        return model.path or model.id or str(built_folder(model, cfg["paths"]["models"]))

    def qco_command(self, name: str) -> List[str]:
        return [sys.executable, "-m", "qco", *self.overrides(name), f"hydra.run.dir={self.out / 'qco' / name}"]

    def plain_command(self, name: str) -> List[str]:
        cfg = self.resolved(name)
        r = cfg["run"]
        return [sys.executable, str(HERE / "plain_diffusers.py"), self.source(cfg), *ROWS[name].plain,
                "--components", ",".join(cfg["quant"]["components"] or ["transformer"]),
                "--device", self.args.device, "--prompt", r["prompt"], "--steps", str(r["steps"]),
                "--height", str(r["height"]), "--width", str(r["width"]), "--guidance", str(r["guidance"]),
                "--seed", str(r["seed"]), "--warmup", str(r["warmup"]), "--repeats", str(r["repeats"]),
                "--out", str(self.out / "plain" / f"{name}.json")]

    def record(self, name: str, side: str) -> Path:
        return self.out / "qco" / name / "results.json" if side == "qco" else self.out / "plain" / f"{name}.json"

    def model_ready(self, name: str) -> bool:
        """Whether the weights the plain side loads exist yet (qco builds a recipe model at its first run)."""
        cfg = self.resolved(name)
        return bool(cfg["model"]["id"]) or Path(self.source(cfg)).is_dir()

    def measure(self, name: str, index: int) -> None:
        # the order alternates row by row; qco goes first wherever the model is not built yet (a first
        # row, or the first row left to run on a fresh machine)
        plain_first = index % 2 == 1 and self.model_ready(name)
        for side in ("plain", "qco") if plain_first else ("qco", "plain"):
            if _finished(read_json(self.record(name, side)) if side == "plain" else read_qco(self.record(name, side))):
                continue
            command = self.qco_command(name) if side == "qco" else self.plain_command(name)
            print(f"  {side}: {' '.join(command[1:])}", flush=True)
            run_logged(command, self.out / "logs" / f"{name}.{side}.log")


def _finished(record) -> bool:
    """A measured row (ok, refused or failed) is not run again; interrupted or missing ones are."""
    status = record.get("status") if isinstance(record, dict) else getattr(record, "status", None)
    return status in ("ok", "refused", "failed")


def read_qco(path: Path) -> Optional[Record]:
    """qco's record of a row, through qco's own reader (any schema it wrote), or None where there is none."""
    try:
        return read_record(path)
    except (OSError, ValueError):
        return None


def summarize(name: str, qco: Optional[Record], plain: Optional[dict]) -> dict:
    row = {"row": name, "title": ROWS[name].title if name in ROWS else name,
           "qco_overrides": " ".join(ROWS[name].qco) if name in ROWS else "",
           "qco_status": str(qco.status) if qco else "missing",
           "plain_status": plain.get("status") if plain else "missing"}
    if qco and qco.status == Status.ok:
        t, m = qco.timings, qco.memory
        row["qco"] = {"latency_s": statistics.median(t.latency_s.samples), "samples": t.latency_s.samples,
                      "first_call_s": t.first_call_s, "peak_allocated_gib": m.peak_allocated_gib,
                      "peak_reserved_gib": m.peak_reserved_gib, "host_peak_gib": m.host_peak_gib,
                      "notes": (qco.plan or {}).get("notes", [])}
    elif qco:
        row["qco_reason"] = qco.reason
    if plain and plain.get("status") == "ok":
        row["plain"] = {"latency_s": statistics.median(plain["latency_samples_s"]), "samples": plain["latency_samples_s"],
                        "first_call_s": plain["first_call_s"], "peak_allocated_gib": plain["peak_allocated_gib"],
                        "peak_reserved_gib": plain["peak_reserved_gib"], "host_peak_gib": plain["host_peak_gib"]}
    elif plain:
        row["plain_reason"] = plain.get("reason", "")
    if qco and plain and (qco.plan or {}).get("load", {}).get("source"):
        # both sides must have loaded the same weights, or the ratio means nothing
        row["same_model"] = qco.plan["load"]["source"] == plain["args"]["model"]
    if "qco" in row and "plain" in row:
        ratio = {}
        for key in ("latency_s", "peak_allocated_gib", "peak_reserved_gib", "host_peak_gib"):
            if row["qco"][key] and row["plain"][key]:
                ratio[key] = row["qco"][key] / row["plain"][key]
        row["ratio"] = ratio
        row["within_goal"] = (row.get("same_model", False) and ratio.get("latency_s", 0) <= LATENCY_GOAL
                              and ratio.get("peak_allocated_gib", 1.0) <= MEMORY_GOAL)
    return row


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: List[dict], context: dict) -> str:
    lines = [f"qco / hand-written diffusers, side by side. Card: {context['gpu']} (driver {context['driver']}); "
             f"{context['versions']}. Model {context['model']}, {context['size']}, {context['steps']} steps, batch 1, "
             f"{context['warmup']} warm-up + {context['repeats']} timed calls, each side in its own process. "
             f"Latency: median of the timed calls; memory: peaks over the calls. Goals: latency ratio <= "
             f"{LATENCY_GOAL}, allocated ratio <= {MEMORY_GOAL}.", "",
             f"Command: `{context['command']}`", "",
             "| row | qco overrides | latency s qco / plain | ratio | peak alloc GiB qco / plain | ratio "
             "| reserved ratio | host GiB qco / plain | first call s qco / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "ratio" in row:
            q, p, r = row["qco"], row["plain"], row["ratio"]
            lines.append(
                f"| {row['title']} | `{row['qco_overrides'] or '(defaults)'}` "
                f"| {_f(q['latency_s'], 3)} / {_f(p['latency_s'], 3)} | **{_f(r.get('latency_s'), 3)}** "
                f"| {_f(q['peak_allocated_gib'])} / {_f(p['peak_allocated_gib'])} | **{_f(r.get('peak_allocated_gib'), 3)}** "
                f"| {_f(r.get('peak_reserved_gib'), 3)} | {_f(q['host_peak_gib'], 1)} / {_f(p['host_peak_gib'], 1)} "
                f"| {_f(q['first_call_s'], 1)} / {_f(p['first_call_s'], 1)} |")
        else:
            why = []
            if "qco" not in row:
                why.append(f"qco {row['qco_status']}: {row.get('qco_reason', '')}")
            if "plain" not in row:
                why.append(f"plain diffusers {row['plain_status']}: {row.get('plain_reason', '')}")
            lines.append(f"| {row['title']} | `{row['qco_overrides'] or '(defaults)'}` | {'<br>'.join(w.replace('|', '/') for w in why)} "
                         "| | | | | | |")
    return "\n".join(lines) + "\n"


def context_of(out: Path, args, names: List[str]) -> dict:
    env, run = {}, {}
    for name in names:
        record = read_qco(out / "qco" / name / "results.json")
        env = env or (asdict(record.environment) if record and record.environment else {})
        run = run or (record.config.get("run", {}) if record else {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "diffusers", "bitsandbytes", "transformers")
                         if packages.get(k))
    return {"gpu": env.get("gpu") or env.get("device", "?"), "driver": env.get("gpu_driver"), "versions": versions,
            "model": args.model, "size": f"{run.get('width')}x{run.get('height')}", "steps": run.get("steps"),
            "warmup": args.warmup, "repeats": args.repeats,
            "command": "python benchmarks/compare.py " + " ".join(sys.argv[1:])}


def write(out: Path, names: List[str], args) -> List[dict]:
    rows = [summarize(n, read_qco(out / "qco" / n / "results.json"), read_json(out / "plain" / f"{n}.json"))
            for n in names]
    context = context_of(out, args, names)
    (out / "compare.json").write_text(json.dumps({"context": context, "rows": rows}, indent=2))
    (out / "compare.md").write_text(markdown(rows, context))
    return rows


def reproduce(first: Path, second: Path) -> str:
    """How far the second run's figures are from the first's, row by row."""
    a = {r["row"]: r for r in json.loads((first / "compare.json").read_text())["rows"]}
    b = {r["row"]: r for r in json.loads((second / "compare.json").read_text())["rows"]}
    lines = [f"Second run ({second.name}) against the first ({first.name}): change of each figure, in %.", "",
             "| row | qco latency | plain latency | latency ratio | qco peak alloc | plain peak alloc |",
             "|---|---|---|---|---|---|"]

    def change(x, y):
        return "-" if not x or not y else f"{100 * (y / x - 1):+.1f}"

    for name, row in b.items():
        old = a.get(name, {})

        def figure(side, key):
            return change((old.get(side) or {}).get(key), (row.get(side) or {}).get(key))

        def ratio():
            return change((old.get("ratio") or {}).get("latency_s"), (row.get("ratio") or {}).get("latency_s"))

        cells = [figure("qco", "latency_s"), figure("plain", "latency_s"), ratio(),
                 figure("qco", "peak_allocated_gib"), figure("plain", "peak_allocated_gib")]
        if all(c == "-" for c in cells):  # neither side measured in both: say what each run recorded
            cells = [f"qco {old.get('qco_status')} / {row.get('qco_status')}",
                     f"plain {old.get('plain_status')} / {row.get('plain_status')}", "", "", ""]
        lines.append(f"| {row['title']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (second / "reproduce.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description="qco against hand-written diffusers, side by side")
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--model", default="flux_dev_random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", nargs="*", default=[], help="more qco overrides for every row, e.g. run.steps=4")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds: start no new row after this; a rerun goes on from there")
    parser.add_argument("--reproduce", nargs=2, type=Path, metavar=("FIRST", "SECOND"))
    args = parser.parse_args()
    if args.reproduce:
        print(reproduce(*args.reproduce))
        return 0
    if args.out is None:
        parser.error("OUT_DIR is required")
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; allowed: {', '.join(ROWS)}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    started = time.monotonic()
    comparison = Comparison(args.out, args)
    for index, name in enumerate(names):
        if args.deadline is not None and time.monotonic() - started > args.deadline:
            print(f"deadline reached: {name} and later rows left for a rerun", flush=True)
            break
        print(f"=== {name}: {ROWS[name].title}", flush=True)
        comparison.measure(name, index)
        write(args.out, names, args)
    rows = write(args.out, names, args)
    print((args.out / "compare.md").read_text())
    return 0 if all(r.get("within_goal") or "ratio" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
