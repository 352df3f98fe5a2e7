"""Every quant x offload combination on the tiny model on CPU, for real: layers really quantized,
offload hooks really attached and firing, images really made. The ones the libraries cannot run
on CPU are refused before loading. Compile is covered by a few combinations (it is slow)."""

import itertools

import pytest
import torch

from qco.errors import QcoError
from tests.helpers import assert_quantized, assert_real_image, attach_offload_probe, build, generate

QUANTS = ["none", "nf4", "fp4", "int8", "torchao_int8wo", "torchao_fp8", "gguf_q8_0", "sdnq_int8", "layerwise_fp8"]
OFFLOADS = ["none", "model", "group_block", "group_leaf", "sequential"]
REFUSED_ON_CPU = {("quant", "torchao_fp8"): "fp8_needs_sm89", ("offload", "sequential"): "sequential_needs_accelerator"}


def _refusal(quant, offload):
    for key in (("quant", quant), ("offload", offload)):
        if key in REFUSED_ON_CPU:
            return REFUSED_ON_CPU[key]
    return None


@pytest.mark.parametrize("quant,offload", list(itertools.product(QUANTS, OFFLOADS)))
@pytest.mark.slow
def test_quant_x_offload_on_cpu(quant, offload, make_cfg):
    cfg = make_cfg(f"quant={quant}", f"offload={offload}", "run.device=cpu")
    refusal = _refusal(quant, offload)
    if refusal:
        with pytest.raises(QcoError, match=refusal):
            build(cfg)
        return
    plan, pipe = build(cfg)
    if quant != "none":
        assert_quantized(pipe, quant, plan.load.quant_components)
    calls = attach_offload_probe(pipe, offload)
    images = generate(pipe, cfg, plan)
    assert_real_image(images[0])
    if calls is not None:
        assert len(calls) >= cfg.run.steps  # the hook fired for every denoising step at least


def test_second_family_quantized_and_offloaded(make_cfg):
    cfg = make_cfg("model=tiny_sd3", "quant=nf4", "offload=model", "run.device=cpu")
    plan, pipe = build(cfg)
    assert plan.load.quant_components == ["transformer", "text_encoder_3"]
    assert_quantized(pipe, "nf4", plan.load.quant_components)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert_real_image(generate(pipe, cfg, plan)[0])


def test_group_offload_to_disk_writes_and_reads(make_cfg, tmp_path):
    cfg = make_cfg("offload=group_block", f"offload.offload_to_disk_path={tmp_path}", "run.device=cpu")
    plan, pipe = build(cfg)
    assert_real_image(generate(pipe, cfg, plan)[0])
    assert list(tmp_path.rglob("*.safetensors")), "group offload wrote nothing to disk"


# --- compile: few and representative, sharing the inductor cache (tests/conftest.py) ---


def _compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.slow
def test_card_example_nf4_max_autotune_model_offload(make_cfg):
    """The design card's own example, on CPU: fullgraph is dropped across the offload hooks."""
    cfg = make_cfg("quant=nf4", "compile=max_autotune", "offload=model", "run.device=cpu")
    plan, pipe = build(cfg)
    assert plan.compile.kwargs["fullgraph"] is False
    assert plan.compile.dynamo["cache_size_limit"] == 1000
    assert_quantized(pipe, "nf4", ["transformer", "text_encoder_2"])
    assert _compiled(pipe.transformer)
    from qco.groups.compile import compile_settings

    with compile_settings(plan.compile.dynamo, plan.compile.inductor):
        assert torch._dynamo.config.cache_size_limit == 1000
        assert_real_image(generate(pipe, cfg, plan)[0])


@pytest.mark.slow
def test_regional_compile_compiles_each_block(make_cfg):
    cfg = make_cfg("compile=regional", "run.device=cpu")
    plan, pipe = build(cfg)
    blocks = list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks)
    assert all(_compiled(block) for block in blocks)
    assert not _compiled(pipe.transformer)
    torch._dynamo.reset()
    counter = torch._dynamo.utils.counters
    counter.clear()
    assert_real_image(generate(pipe, cfg, plan)[0])
    assert counter["stats"]["unique_graphs"] >= 1  # dynamo really captured graphs


@pytest.mark.parametrize("overrides,rule", [
    (["quant=nf4", "compile=default"], "bitsandbytes_4bit_compile_on_cpu"),
    (["model=tiny_sd3", "compile=regional"], "regional_needs_repeated_blocks"),
    (["offload=group_block", "offload.use_stream=true"], "streams_need_cuda"),
])
def test_refused_compile_combinations_on_cpu(overrides, rule, make_cfg):
    with pytest.raises(QcoError, match=rule):
        build(make_cfg(*overrides, "run.device=cpu"))
