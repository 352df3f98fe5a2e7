"""Fitting the card (issue 12) on the tiny models, real code: the store of quantized components, pinned model
offload, the 4-bit state hook under group offload, the out-of-memory advice, the card table and recommend.
The GPU half (caps, bus speed) is in benchmarks/results/fit_h100_2."""

import json
import logging
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest

from qco.errors import EXIT_USER_ERROR
from qco.groups.offload import PinnedCpuOffload, QuantStateFollowsWeight
from qco.oom import next_steps
from qco.recommend import main as recommend_main
from qco.sweep.aggregate import card, load_rows
from qco.sweep.job import fits_a_smaller_cap
from tests.helpers import build, error_lines, generate, qco_cli, table_rows


@pytest.fixture
def quantize_calls(monkeypatch):
    """Every 4-bit quantization bitsandbytes makes (the real function still runs)."""
    calls = []
    original = bnb.functional.quantize_4bit

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(bnb.functional, "quantize_4bit", counted)
    return calls


def kept_folders(store: Path):
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def pixels(images):
    return [np.asarray(image) for image in images]


@pytest.mark.slow
def test_quantized_components_are_kept_once_and_loaded_after(tmp_path, make_cfg, quantize_calls):
    cfg = make_cfg("quant=nf4", f"paths.quantized={tmp_path}", "run.device=cpu")
    plan, pipe = build(cfg)
    first = generate(pipe, cfg, plan)
    assert quantize_calls, "the first run quantizes"
    (folder,) = kept_folders(tmp_path)
    marker = json.loads((folder / "qco_build.json").read_text())
    assert set(marker["classes"]) == {"transformer", "text_encoder_2"}
    assert marker["key"]["backend"] == "bitsandbytes_4bit" and marker["key"]["source_files"]

    quantize_calls.clear()
    plan, pipe = build(cfg)
    assert quantize_calls == [], "the second run loads the kept components: no quantization"
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q, bnb.nn.Linear4bit)
    assert all((a == b).all() for a, b in zip(pixels(first), pixels(generate(pipe, cfg, plan))))


def test_a_damaged_copy_is_rebuilt_never_loaded(tmp_path, make_cfg, quantize_calls, caplog):
    cfg = make_cfg("quant=nf4", f"paths.quantized={tmp_path}", "run.device=cpu")
    build(cfg)
    (folder,) = kept_folders(tmp_path)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # altered at the same size: only its checksum can tell
    weights.write_bytes(bytes(data))
    quantize_calls.clear()
    with caplog.at_level(logging.WARNING):
        build(cfg)
    assert "damaged" in caplog.text and "sha256" in caplog.text
    assert quantize_calls, "quantized again rather than loaded"
    (again,) = kept_folders(tmp_path)
    assert again == folder and bytes(data) != weights.read_bytes()  # written anew


@pytest.mark.parametrize("change", [["quant=fp4"], ["quant.components=[transformer]"], ["run.dtype=float32"]])
@pytest.mark.slow
def test_changed_settings_are_a_new_copy(change, tmp_path, make_cfg, quantize_calls):
    build(make_cfg("quant=nf4", f"paths.quantized={tmp_path}", "run.device=cpu"))
    quantize_calls.clear()
    build(make_cfg("quant=nf4", f"paths.quantized={tmp_path}", "run.device=cpu", *change))
    assert quantize_calls and len(kept_folders(tmp_path)) == 2


def test_a_changed_source_is_a_new_copy_never_a_stale_load(tmp_path, make_cfg, quantize_calls):
    """A local model (model.path) whose weights change: the kept copy of the old weights is not loaded."""
    import os
    import shutil

    from qco.stores.models import resolve_source

    source = tmp_path / "my_flux"
    shutil.copytree(resolve_source(make_cfg().model, make_cfg().paths.models), source)
    store = tmp_path / "store"
    cfg = make_cfg("quant=nf4", f"model.path={source}", f"paths.quantized={store}", "run.device=cpu")
    build(cfg)
    weights = source / "transformer" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten
    quantize_calls.clear()
    build(cfg)
    assert quantize_calls and len(kept_folders(store)) == 2


def test_store_off_keeps_nothing(tmp_path, make_cfg):
    build(make_cfg("quant=nf4", f"paths.quantized={tmp_path}", "quant.store=false", "run.device=cpu"))
    assert not tmp_path.exists() or kept_folders(tmp_path) == []


def test_model_offload_keeps_one_host_copy_across_calls(make_cfg):
    cfg = make_cfg("quant=nf4", "offload=model", "run.device=cpu")
    plan, pipe = build(cfg)
    assert plan.place.pinned
    hook = pipe.transformer._hf_hook
    first = generate(pipe, cfg, plan)
    second = generate(pipe, cfg, plan)
    # the end of each call offloads through the same pinned hooks (diffusers would make new ones, whose
    # module.to("cpu") copies bitsandbytes' quantization state to pageable memory)
    assert pipe.transformer._hf_hook is hook and isinstance(hook, PinnedCpuOffload)
    for tensor in pipe.transformer.parameters():  # pointed back at its home copy, not a fresh one
        assert tensor.data.data_ptr() == hook.home[tensor].data_ptr()
    assert all((a == b).all() for a, b in zip(pixels(first), pixels(second)))


@pytest.mark.slow
def test_model_offload_matches_no_offload(make_cfg):
    cfg = make_cfg("quant=nf4", "run.device=cpu")
    plan, pipe = build(cfg)
    plain = generate(pipe, cfg, plan)
    cfg = make_cfg("quant=nf4", "offload=model", "run.device=cpu")
    plan, pipe = build(cfg)
    assert all((a == b).all() for a, b in zip(pixels(plain), pixels(generate(pipe, cfg, plan))))


def test_four_bit_state_hook_sits_inside_group_offload(make_cfg):
    cfg = make_cfg("quant=nf4", "offload=group_block", "run.device=cpu")
    plan, pipe = build(cfg)
    layers = [m for c in (pipe.transformer, pipe.text_encoder_2) for m in c.modules()
              if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    for layer in layers:
        registry = layer._diffusers_hook
        assert isinstance(registry.get_hook("qco_quant_state_follows_weight"), QuantStateFollowsWeight)
    # registered before group offload's hooks, so it runs after a group's weights were moved
    leaf_cfg = make_cfg("quant=nf4", "offload=group_leaf", "run.device=cpu")
    leaf_plan, leaf_pipe = build(leaf_cfg)
    leaf = leaf_pipe.transformer.transformer_blocks[0].attn.to_q
    assert list(leaf._diffusers_hook.hooks) == ["qco_quant_state_follows_weight", "group_offloading"]
    plain_cfg = make_cfg("quant=nf4", "run.device=cpu")
    plain_plan, plain_pipe = build(plain_cfg)
    expected = pixels(generate(plain_pipe, plain_cfg, plain_plan))
    assert all((a == b).all() for a, b in zip(expected, pixels(generate(pipe, cfg, plan))))
    assert all((a == b).all() for a, b in zip(expected, pixels(generate(leaf_pipe, leaf_cfg, leaf_plan))))


# --- out-of-memory advice: never what the run already uses ---

@pytest.mark.parametrize("overrides,phase,expected,absent", [
    ([], "load and placement", ["quant=nf4", "offload=model"], ["run.height", "run.batch"]),
    (["quant=nf4", "offload=model"], "measured call 1", ["offload=group_mixed", "run.height=32 run.width=32"],
     ["quant=nf4", "offload=model:"]),
    (["quant=nf4", "quant.components=[transformer]", "offload=group_block"], "warm-up call 1",
     ["quant.components=[transformer,text_encoder_2]", "offload=group_mixed"],
     ["offload=group_block", "offload=group_leaf"]),
    (["quant=nf4", "offload=group_block", "offload.others_offload_type=leaf_level"], "warm-up call 1",
     ["offload=group_leaf", "a smaller image"], ["group_mixed"]),
    (["quant=nf4", "offload=group_mixed"], "load and placement", ["offload=group_leaf"], ["group_mixed"]),
    (["quant=int8", "offload=group_leaf", "run.batch=2"], "measured call 1", ["quant=nf4", "run.batch=1"],
     ["offload=", "run.height"]),
    (["quant=nf4", "offload=group_leaf"], "load and placement", [], ["quant=", "offload="]),
])
@pytest.mark.slow
def test_out_of_memory_advice_names_the_next_step(overrides, phase, expected, absent, make_cfg):
    steps = " | ".join(next_steps(make_cfg(*overrides), phase))
    for text in expected:
        assert text in steps, steps
    for text in absent:
        assert text not in steps, steps


def test_video_advice_lowers_frames_to_a_valid_count(make_cfg):
    steps = " | ".join(next_steps(make_cfg("model=tiny_wan", "quant=nf4", "offload=group_leaf"), "measured call 1"))
    assert "run.frames=" in steps and "offload=" not in steps


# --- the card: caps, fits_smaller_cap, card.md and recommend ---

def write_record(folder: Path, status: str, cap, overrides, latency=None, reserved=None):
    """A job's record as a GPU run under a cap writes it, through the record's own types."""
    from qco.record import (Environment, LatencyStats, Memory, Record, StepStats, Timings, Transfer, Transfers,
                            write_record as write)

    folder.mkdir(parents=True)
    record = Record(status=status, key=" ".join(overrides), overrides=overrides, started_at=0.0, config={
        "model": {"name": "flux_dev_random"}, "quant": {"name": overrides[0].split("=")[1]},
        "run": {"memory_limit_gib": cap, "width": 1024, "height": 1024, "steps": 28, "batch": 1, "warmup": 1,
                "repeats": 2, "device": "cuda"}})
    if status == "ok":
        stats = dict(mean=latency, min=latency, p50=latency, p90=latency, stdev=0.01, n=2)
        record.timings = Timings(load_s=1.0, place_s=1.0, first_call_s=latency * 2,
                                 latency_s=LatencyStats(**stats, samples=[latency] * 2), step_s=StepStats(**stats))
        record.memory = Memory(peak_allocated_gib=reserved - 0.3, peak_reserved_gib=reserved, host_peak_gib=40.0,
                               limit_gib=cap, transfers=Transfers(to_gpu=Transfer(190.0, 45.0, 10)))
        record.environment = Environment(python="3.11", platform="linux", cpu_count=16, packages={}, cuda="13.0",
                                         device="cuda", gpu="NVIDIA H100 80GB HBM3")
    write(folder / "results.json", record)


@pytest.fixture
def card_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    write_record(sweep / "a", "failed", 4, ["quant=nf4", "offload=none", "run.memory_limit_gib=4"])
    write_record(sweep / "b", "ok", 16, ["quant=nf4", "offload=none", "run.memory_limit_gib=16"], 4.2, 13.1)
    write_record(sweep / "c", "ok", 4, ["quant=nf4", "offload=group_block", "run.memory_limit_gib=4"], 5.9, 3.7)
    write_record(sweep / "d", "ok", 8, ["quant=nf4", "offload=model", "run.memory_limit_gib=8"], 4.6, 7.6)
    return sweep


def test_card_names_the_fastest_under_each_cap(card_sweep):
    table = {entry["cap_gib"]: entry["row"] for entry in card(load_rows(card_sweep))}
    assert table[4].job.endswith("offload=group_block,run.memory_limit_gib=4")
    assert table[8].cap_gib == 8 and table[8].latency_s == 4.6  # model offload beats block offload
    assert table[16].latency_s == 4.2
    rows = load_rows(card_sweep)
    assert {r.moved_gib_per_call for r in rows if r.status == "ok"} == {190.0}


@pytest.mark.slow
def test_aggregate_writes_the_card_with_each_caps_command(card_sweep):
    from qco.sweep.aggregate import aggregate

    aggregate(card_sweep)
    four = next(row for row in table_rows((card_sweep / "card.md").read_text()) if row[0] == "4")
    assert four[-1] == "`python -m qco quant=nf4 offload=group_block run.memory_limit_gib=4`" and four[2] == "5.900"
    assert "cap_gib" in (card_sweep / "sweep.csv").read_text().splitlines()[0]


def test_a_combination_that_ran_under_a_smaller_cap_is_not_run_again(card_sweep, make_cfg):
    cfg = make_cfg("quant=nf4", "offload=model", "run.memory_limit_gib=12")
    job = card_sweep / "e"
    record = fits_a_smaller_cap(cfg, job, ["quant=nf4", "offload=model", "run.memory_limit_gib=12"])
    assert record.status == "fits_smaller_cap" and "run.memory_limit_gib=8" in record.reason
    assert json.loads((job / "results.json").read_text())["status"] == "fits_smaller_cap"
    # one that failed under the smaller cap runs under the larger one
    cfg = make_cfg("quant=nf4", "run.memory_limit_gib=6")
    assert fits_a_smaller_cap(cfg, card_sweep / "f", ["quant=nf4", "offload=none", "run.memory_limit_gib=6"]) is None


def test_recommend_answers_my_card_has_n_gib(card_sweep, capsys):
    assert recommend_main([str(card_sweep), "--memory-gib", "8"]) == 0
    out = capsys.readouterr().out
    assert "offload=model" in out and "ran under a cap of 8 GiB" in out
    assert recommend_main([str(card_sweep), "--memory-gib", "6"]) == 0
    assert "group_block" in capsys.readouterr().out  # 8 GiB rows are not proven on a 6 GiB card
    assert recommend_main([str(card_sweep), "--memory-gib", "3"]) == 1


@pytest.mark.slow
def test_a_memory_cap_on_a_cpu_is_refused_in_one_line(tmp_path, models_cache):
    result = qco_cli(["run.memory_limit_gib=4", "run.device=cpu"], tmp_path, models_cache)
    (line,) = error_lines(result)
    assert result.returncode == EXIT_USER_ERROR
    assert "memory_cap_needs_cuda" in line and "fix:" in line


@pytest.mark.slow
def test_fit_card_sweep_on_a_cpu_refuses_every_job_without_starting_one(tmp_path, models_cache):
    # the packaged experiment at one of its caps (all six would take 48 jobs, each refused the same way)
    result = qco_cli(["-m", "experiment=fit_card", "model=tiny_flux", "run.device=cpu",
                      "run.memory_limit_gib=4", "hydra.sweep.dir=sweep"], tmp_path, models_cache, timeout=600)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert len(records) == 8 and {r["status"] for r in records} == {"refused"}
    assert all("memory_cap_needs_cuda" in r["reason"] for r in records)
    assert not list((tmp_path / "sweep").glob("*/job.log"))  # no process was started for any


def test_torchao_components_are_kept_too(tmp_path, make_cfg):
    pytest.importorskip("torchao")
    cfg = make_cfg("quant=torchao_int8wo", f"paths.quantized={tmp_path}", "run.device=cpu")
    plan, pipe = build(cfg)
    first = generate(pipe, cfg, plan)
    (folder,) = kept_folders(tmp_path)
    assert json.loads((folder / "qco_build.json").read_text())["classes"] == {"transformer": "FluxTransformer2DModel"}
    assert list((folder / "transformer").glob("*.safetensors"))  # never a pickle: loading one can run code
    plan, pipe = build(cfg)
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__module__.startswith("torchao")
    # read from safetensors in place they sat at the file's 8-byte offsets, and compiled CPU kernels crashed
    inner = [getattr(w, name) for w in pipe.transformer.parameters() if hasattr(w, "__tensor_flatten__")
             for name in w.__tensor_flatten__()[0]]
    assert inner and all(t.data_ptr() % 64 == 0 for t in inner)
    assert all((a == b).all() for a, b in zip(pixels(first), pixels(generate(pipe, cfg, plan))))


@pytest.mark.slow
def test_kept_torchao_components_run_compiled_on_a_cpu(tmp_path, make_cfg):
    """Read from safetensors in place, kept torchao weights crashed compiled CPU kernels (a segfault: this test's
    worker died, exit -11); copied into memory of their own they run."""
    pytest.importorskip("torchao")
    store = f"paths.quantized={tmp_path}"
    build(make_cfg("quant=torchao_int8wo", store, "run.device=cpu"))  # quantizes and keeps
    cfg = make_cfg("quant=torchao_int8wo", "compile=regional", store, "run.device=cpu", "run.steps=1")
    plan, pipe = build(cfg)
    assert kept_folders(tmp_path) and plan.compile.method == "regional"
    assert len(generate(pipe, cfg, plan)) == 1


def test_transfers_are_summed_each_way_by_kind_of_memory():
    from qco.measure import copies_in_trace
    from qco.record import GIB

    def copy(name, megabytes, microseconds):
        return {"ph": "X", "cat": "gpu_memcpy", "name": name, "dur": microseconds,
                "args": {"bytes": megabytes * 2**20, "device": 0}}

    events = [copy("Memcpy HtoD (Pinned -> Device)", 1024, 20_000), copy("Memcpy HtoD (Pageable -> Device)", 512, 60_000),
              copy("Memcpy DtoH (Device -> Pageable)", 256, 50_000), {"cat": "kernel", "name": "gemm", "dur": 5}]
    moved = copies_in_trace(events)
    assert moved.to_gpu.copies == 2 and moved.to_gpu.gib_per_call == pytest.approx(1.5)
    assert moved.to_gpu.gib_per_s == pytest.approx(1.5 / 0.08)
    assert moved.to_gpu.gib_by_kind == {"Pinned -> Device": 1.0, "Pageable -> Device": 0.5}
    assert moved.from_gpu.gib_by_kind == {"Device -> Pageable": 0.25}
    assert copies_in_trace([{"cat": "kernel", "name": "gemm", "dur": 5}]).error  # never a silent zero
    assert GIB == 2**30


def test_the_time_compute_waited_on_copies_is_the_copy_time_no_kernel_hides():
    """Copies 0-100 and 150-250 us; kernels 50-120 and 200-300 and 400-500: copies ran 200 us, 100 of them
    under a kernel, so the GPU computed nothing for 100 us while weights came in. Copies back to the host and
    kernels alone do not count."""
    from qco.measure import copies_in_trace

    def event(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"bytes": 2**20}}

    events = [event("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 0, 100),
              event("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 150, 100),
              event("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 600, 300),
              event("kernel", "gemm", 50, 70), event("kernel", "gemm", 60, 10), event("kernel", "gemm", 200, 100),
              event("kernel", "gemm", 400, 100)]
    assert copies_in_trace(events).compute_waited_s == pytest.approx(100e-6)
    hidden = [event("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 10, 20), event("kernel", "gemm", 0, 50)]
    assert copies_in_trace(hidden).compute_waited_s == 0


def test_out_of_memory_names_what_fit_in_the_sweep_by_its_reserve(card_sweep):
    from qco.oom import fitting_in_sweep
    from qco.sweep.aggregate import read_rows

    failed = card_sweep / "a"
    setting = next(r.setting for r in read_rows(card_sweep) if r.dir == failed)
    fits = fitting_in_sweep(failed, setting, 8.0, "reserved")
    assert [line.split(" (")[0] for line in fits] == ["quant=nf4 offload=model run.memory_limit_gib=8",
                                                     "quant=nf4 offload=group_block run.memory_limit_gib=4"]
    assert fitting_in_sweep(failed, setting, 3.0, "reserved") == []


# --- what cannot fit a cap, known before loading ---


def capped_plan(make_cfg, *overrides):
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import Target

    cfg = make_cfg(*overrides)
    return cfg, apply_rules(draft_plan(cfg, Target("cuda:0", (9, 0), "NVIDIA H200")), "test")


def test_the_weights_floor_is_counted_from_the_files_and_never_above_the_loaded_weights(make_cfg):
    from qco.fit import weights_floor_gib
    from qco.measure import component_sizes_gib
    from qco.stores.models import resolve_source

    cfg, plan = capped_plan(make_cfg, "run.memory_limit_gib=0.0001")
    source = Path(resolve_source(cfg.model, cfg.paths.models))
    floor = weights_floor_gib(plan, source)
    _, pipe = build(make_cfg("run.device=cpu"))  # bf16, as the run's dtype
    loaded = component_sizes_gib(pipe)
    assert set(floor) == set(loaded)
    for name in floor:  # the files hold every parameter; non-persistent buffers are not in them
        assert 0.9 * loaded[name] <= floor[name] <= loaded[name] * 1.000001, name
    cfg, nf4 = capped_plan(make_cfg, "quant=nf4", "run.memory_limit_gib=0.0001")
    quantized = weights_floor_gib(nf4, source)
    assert quantized["transformer"] == pytest.approx(floor["transformer"] / 4, rel=0.01)  # 4 bits of 16
    assert quantized["vae"] == floor["vae"]


@pytest.mark.parametrize("offload,refused", [("none", "every component at once"),
                                             ("model", "its largest component, transformer"),
                                             ("group_block", None), ("group_leaf", None)])
def test_a_cap_the_weights_alone_exceed_is_refused_before_loading(offload, refused, make_cfg):
    from qco.errors import QcoError
    from qco.fit import check_fits
    from qco.stores.models import resolve_source

    cfg, plan = capped_plan(make_cfg, f"offload={offload}", "run.memory_limit_gib=0.0001")
    source = Path(resolve_source(cfg.model, cfg.paths.models))
    if refused is None:
        check_fits(plan, source, cfg)  # group offload holds a part: no bound, it must run to tell
        return
    with pytest.raises(QcoError) as error:
        check_fits(plan, source, cfg)
    (line,) = error.value.lines
    assert "run.memory_limit_gib=0.0001: does not fit" in line and refused in line and "fix:" in line
    next_offload = {"none": "offload=model", "model": "offload=group_mixed"}[offload]
    assert next_offload in line
    cfg, plan = capped_plan(make_cfg, f"offload={offload}", "run.memory_limit_gib=1")
    check_fits(plan, source, cfg)  # 1 GiB holds the tiny model's weights
