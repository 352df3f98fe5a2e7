"""How close a run came to the card (qco/peak.py): the denoiser's FLOPs counted on the meta device are the ones
the real module does, at full size they are the architecture's arithmetic, they are kept and never stale, the
hook that sees the inputs stays out of a compiled graph, the table of peaks answers by card name and dtype, and a
run's record and a sweep's tables carry the figures."""

import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qco.peak import (DenoiserWatch, card_peak, count_flops, denoiser_config, denoiser_work, matmul_dtype,
                      median_step_s)
from qco.record import read_record, read_rows

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])


def _flux_inputs(tokens: int, text: int, channels: int, joint: int, pooled: int, device="meta"):
    b = torch.bfloat16
    return dict(hidden_states=torch.randn(1, tokens, channels, dtype=b, device=device),
                timestep=torch.ones(1, dtype=b, device=device), guidance=torch.ones(1, device=device),
                pooled_projections=torch.randn(1, pooled, dtype=b, device=device),
                encoder_hidden_states=torch.randn(1, text, joint, dtype=b, device=device),
                txt_ids=torch.zeros(text, 3, dtype=b, device=device),
                img_ids=torch.zeros(tokens, 3, dtype=b, device=device),
                joint_attention_kwargs=None, return_dict=False)


def _watched(module, inputs):
    watch = DenoiserWatch(module)
    watch.arm()
    with torch.no_grad():
        module(**inputs)
    watch.disarm()
    return watch


def test_the_meta_count_is_what_the_real_module_does(tmp_path):
    """The tiny Flux transformer with real weights and inputs on the CPU, counted by flop_counter as it runs, and
    counted again by qco from the shapes its hook saw, on the meta device: the same FLOPs. (The real run uses the
    math attention: flop_counter does not count the CPU's fused attention kernel, and would miss attention.)"""
    from diffusers import FluxTransformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = dict(FLUX_DEV, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                  joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])
    module = FluxTransformer2DModel.from_config(config).to(torch.bfloat16)
    module.save_config(tmp_path)
    inputs = _flux_inputs(tokens=64, text=8, channels=64, joint=32, pooled=16, device="cpu")
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        module(**inputs)
    watch = _watched(module, inputs)
    assert watch.calls == 1 and watch.inputs["kwargs"]["hidden_states"] == {"tensor": [1, 64, 64], "dtype": "bfloat16"}
    config = denoiser_config("FluxTransformer2DModel", str(tmp_path), None)
    counted = count_flops("FluxTransformer2DModel", config, "bfloat16", watch.inputs)
    assert counted == counter.get_total_flops() > 0


def test_flux_dev_at_1024_is_its_arithmetic(tmp_path):
    """FLUX.1-dev at 1024x1024: N = 4096 image + 512 text tokens of width D = 3072, 19 double and 38 single blocks.
    Every block holds 12 D^2 weights a token (double: q, k, v, out and a 4x MLP on each stream; single: q, k, v, a
    4x MLP in and a 5D-wide projection out), 2 FLOPs a weight: 24 D^2 N; attention's two products 4 N^2 D; the
    embedders in and out on top. About 74.4 TFLOP a call, 14.9 of them attention."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        FluxTransformer2DModel.from_config(FLUX_DEV).save_config(tmp_path)
    inputs = {"args": [], "kwargs": {k: ({"tensor": list(v.shape), "dtype": str(v.dtype)[6:]}
                                         if isinstance(v, torch.Tensor) else v)
                                     for k, v in _flux_inputs(4096, 512, 64, 4096, 768).items()}}
    flops = count_flops("FluxTransformer2DModel", denoiser_config("FluxTransformer2DModel", str(tmp_path), None),
                        "bfloat16", inputs)
    image, text, width = 4096, 512, 24 * 128
    tokens = image + text
    blocks = 57 * (24 * width**2 * tokens + 4 * tokens**2 * width)
    embedders = 2 * (64 * width * image + 4096 * width * text + width * 64 * image)
    assert flops == pytest.approx(blocks + embedders, rel=1e-3)  # the rest: the per-call modulation and norms
    assert flops / 1e12 == pytest.approx(74.38, abs=0.01)


def test_a_kept_count_is_used_and_a_stale_one_counted_again(tmp_path):
    from diffusers import FluxTransformer2DModel

    config = dict(FLUX_DEV, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                  joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])
    folder = tmp_path / "transformer"
    module = FluxTransformer2DModel.from_config(config).to(torch.bfloat16)
    module.save_config(folder)
    config = denoiser_config("FluxTransformer2DModel", str(tmp_path), "transformer")  # as a run reads it
    shape = {"height": 128, "width": 128}
    small = _watched(module, _flux_inputs(64, 8, 64, 32, 16, device="cpu"))
    work, how = denoiser_work(small, "FluxTransformer2DModel", config, "bfloat16", shape, str(tmp_path), "tiny")
    assert how == "counted" and work.calls_per_image_call == 1
    kept = list(tmp_path.glob("tiny-flops-*.json"))
    assert len(kept) == 1

    unseen = DenoiserWatch(module)  # a denoiser compiled whole: the hook saw nothing, the kept count serves
    again, how = denoiser_work(unseen, "FluxTransformer2DModel", config, "bfloat16", shape, str(tmp_path), "tiny")
    assert how == "kept" and again.flop_per_call == work.flop_per_call

    larger = _watched(module, _flux_inputs(256, 8, 64, 32, 16, device="cpu"))  # other shapes under the same key
    recount, how = denoiser_work(larger, "FluxTransformer2DModel", config, "bfloat16", shape, str(tmp_path), "tiny")
    assert how == "counted" and recount.flop_per_call > work.flop_per_call

    elsewhere, how = denoiser_work(unseen, "FluxTransformer2DModel", config, "bfloat16", {"height": 64},
                                   str(tmp_path), "tiny")
    assert elsewhere is None and "compile=none" in how

    kept[0].unlink()  # a FIFO or a link planted in its place is neither read (a FIFO would block) nor followed
    os.mkfifo(kept[0])
    assert denoiser_work(larger, "FluxTransformer2DModel", config, "bfloat16", shape, str(tmp_path),
                         "tiny")[1] == "counted"
    assert kept[0].is_file() and not kept[0].is_symlink()  # the count written in its place
    elsewhere_file = tmp_path / "elsewhere.json"  # a link to a file outside: its target is never written
    elsewhere_file.write_text(kept[0].read_text())
    kept[0].unlink()
    kept[0].symlink_to(elsewhere_file)
    assert denoiser_work(larger, "FluxTransformer2DModel", config, "bfloat16", shape, str(tmp_path),
                         "tiny")[1] == "counted"
    elsewhere_file.write_text("outside")
    assert not kept[0].is_symlink() and kept[0].read_text() != "outside"

    data = json.loads(kept[0].read_text())  # an altered file is not believed
    data["flop_per_call"] = -1
    kept[0].write_text(json.dumps(data))
    assert denoiser_work(larger, "FluxTransformer2DModel", config, "bfloat16", shape,
                         str(tmp_path), "tiny")[1] == "counted"


@pytest.mark.slow
def test_the_watch_stays_out_of_a_compiled_graph():
    """Under torch.compile the hook does nothing (no guard on its state, so arming it recompiles nothing);
    uncompiled it counts every call."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    layer = torch.nn.Linear(8, 8)
    watch = DenoiserWatch(layer)
    compiled = torch.compile(layer, fullgraph=True)
    compiled(torch.randn(2, 8))
    graphs = counters["stats"]["unique_graphs"]
    watch.arm()
    compiled(torch.randn(2, 8))
    assert watch.calls == 0 and watch.inputs is None and counters["stats"]["unique_graphs"] == graphs
    layer(torch.randn(2, 8))
    layer(torch.randn(2, 8))
    assert watch.calls == 2 and watch.inputs["args"] == [{"tensor": [2, 8], "dtype": "float32"}]


def test_card_peaks_by_name_and_dtype():
    assert card_peak("NVIDIA H100 80GB HBM3", "bfloat16") == (989.4,
                                                              "NVIDIA H100 SXM5 datasheet (dense; tf32 for float32)")
    assert card_peak("NVIDIA H100 PCIe", "float8")[0] == 1513.0
    assert card_peak("NVIDIA H200", "float8")[0] == 1978.9
    assert card_peak("NVIDIA A100-SXM4-80GB", "float8") == (None, "NVIDIA A100 datasheet (dense; tf32 for float32; "
                                                                  "no fp8) gives no float8 peak")
    assert card_peak("NVIDIA GeForce RTX 4090", "bfloat16")[0] is None
    assert "qco/peak.py PEAKS" in card_peak("NVIDIA GeForce RTX 4090", "bfloat16")[1]
    assert card_peak(None, "bfloat16")[0] is None


def test_the_matmul_dtype_follows_the_quantizer(make_cfg):
    from qco.plan import draft_plan
    from qco.target import Target

    h100 = Target("cuda:0", (9, 0), "NVIDIA H100 80GB HBM3")
    expected = {"none": "bfloat16", "nf4": "bfloat16", "int8": "int8", "torchao_fp8": "float8",
                "torchao_int8wo": "bfloat16", "gguf_q8_0": "bfloat16", "layerwise_fp8": "bfloat16"}
    for quant, dtype in expected.items():
        assert matmul_dtype(draft_plan(make_cfg(f"quant={quant}"), h100).load) == dtype, quant


def test_the_median_step_leaves_out_each_calls_first():
    assert median_step_s([[9.0, 1.0, 2.0, 3.0], [8.0, 2.0, 2.0]]) == 2.0
    assert median_step_s([[9.0]]) is None


def test_a_run_records_its_work_and_the_sweep_table_shows_it(small_sweep, models_cache):
    """The session's small sweep (quant=none,int8 on the CPU): each record holds the denoiser's work, the same for
    both (the architecture's), its TFLOP/s over the median step, the dtype of its products, and no peak on a CPU;
    the count is kept beside the model; sweep.md shows the columns."""
    (sweep,) = (small_sweep / "outputs" / "sweeps").iterdir()
    rows = {row.quant: row for row in read_rows(sweep)}
    assert set(rows) == {"none", "int8"}
    works = set()
    for quant, row in rows.items():
        peak = read_record(row.dir / "results.json").peak
        assert peak.denoiser_tflop_per_call > 0 and peak.denoiser_calls_per_step == 1.0
        assert peak.flops_from in ("counted", "kept")
        assert peak.achieved_tflops == pytest.approx(peak.denoiser_tflop_per_call / peak.step_s)
        assert row.tflops == peak.achieved_tflops
        assert peak.matmul_dtype == {"none": "bfloat16", "int8": "int8"}[quant]
        assert peak.peak_fraction is None and "no GPU" in peak.note  # a CPU has no peak in the table
        works.add(peak.denoiser_tflop_per_call)
    assert len(works) == 1
    header = (sweep / "sweep.md").read_text().splitlines()
    assert any("tflops" in line and "peak_fraction" in line and "bus_fraction" in line for line in header)
    assert list(models_cache.glob("tiny_flux-flops-*.json"))
