"""One line of benchmarks/gpu_field.sh's table, from a run's record (read through qco's own reader): the row, its
exit code and wall time, latency with its spread, first call, peak allocated and reserved GiB, SSIM and PSNR
against the reference, and what the option's own part of the record says (the store, the cache's steps, the
LoRA swaps, the compile store). Usage: python benchmarks/field_line.py NAME RESULTS_JSON EXIT WALL_S OVERRIDES"""

import sys

from qco.record import read_record


def _gib(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def line(name: str, path: str, code: str, wall: str, overrides: str) -> str:
    try:
        r = read_record(path)
    except (OSError, ValueError) as error:
        return f"{name} | exit {code} | {wall} s | no record: {error}"
    head = f"{name} | exit {code} | {wall} s | {overrides} | {r.status}"
    if r.status != "ok":
        return f"{head} | {r.reason[:300]}"
    t, m, q = r.timings, r.memory, r.quality
    parts = [head, f"latency {t.latency_s.mean:.3f} +- {t.latency_s.stdev:.3f} s (n {t.latency_s.n})",
             f"first {t.first_call_s:.1f} s", f"load {t.load_s:.1f} s",
             f"peak {_gib(m.peak_allocated_gib)}/{_gib(m.peak_reserved_gib)} GiB",
             f"denoiser {m.components_gib.get('transformer', 0):.2f} GiB"]
    if q is not None:
        parts.append(f"ssim {q.ssim} psnr {q.psnr_db}" if q.error is None else f"quality error {q.error[:80]}")
    if r.quantized_store and r.quantized_store.get("tensors"):
        parts.append(f"gguf {r.quantized_store['tensors']} written {r.quantized_store.get('written')} "
                     f"keep {t.keep_s}")
    if r.peak is not None:
        p = r.peak
        parts.append(f"denoiser {p.denoiser_tflop_per_call or 0:.1f} TFLOP a call, {p.achieved_tflops or 0:.0f} TFLOP/s "
                     f"{p.matmul_dtype}, peak_fraction {p.peak_fraction if p.peak_fraction is None else round(p.peak_fraction, 3)}"
                     + (f", bus {p.bus_copy_gib_s or 0:.1f}/{p.bus_probe_gib_s:.1f} GiB/s" if p.bus_probe_gib_s else ""))
    if m.transfers is not None and m.transfers.to_gpu is not None:
        parts.append(f"moved {m.transfers.to_gpu.gib_per_call:.2f} GiB a call, compute waited "
                     f"{m.transfers.compute_waited_s} s")
    if r.cache_steps:
        c = r.cache_steps
        parts.append(f"steps computed {c.computed} reused {c.reused} of {c.steps} (modules computed {c.modules_computed})")
    if r.lora:
        parts.append(f"lora load {r.lora.load_s:.1f} s fused {r.lora.fused} hotswap {r.lora.hotswap} swaps "
                     + "; ".join(f"{s.adapter}: swap {s.swap_s:.2f} s call {s.call_s:.2f} s graphs {s.graphs_compiled}"
                                 for s in r.lora.swaps))
    if r.compile_cache:
        c = r.compile_cache
        parts.append(f"compile {c.start} graphs {c.graphs} compiled {c.graphs_compiled} from cache {c.graphs_from_cache}")
    return " | ".join(parts)


if __name__ == "__main__":
    print(line(*sys.argv[1:6]))
