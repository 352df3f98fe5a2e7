"""The combination rules on both kinds of target. GPU targets are checked here through the plan
alone (no weights, no GPU needed); the GPU runs themselves are in benchmarks/results."""

import pytest

from qco.errors import QcoError
from qco.plan import draft_plan
from qco.rules import RULES, apply_rules
from qco.target import Target

H200 = Target("cuda:0", (9, 0), "NVIDIA H200")
AMPERE = Target("cuda:0", (8, 0), "NVIDIA A100")
CPU = Target("cpu")


def plan_for(make_cfg, target, *overrides):
    return apply_rules(draft_plan(make_cfg(*overrides), target), " ".join(overrides))


def test_every_rule_has_a_reason_and_refusals_a_fix():
    for rule in RULES:
        assert 40 < len(rule.reason) <= 110, rule.name  # one line; the rest is evidence, in README's table
        assert rule.adjust is not None or rule.fix, rule.name
    assert len({rule.name for rule in RULES}) == len(RULES)


def test_readmes_rules_table_names_every_rule():
    from tests.conftest import REPO

    table = (REPO / "README.md").read_text().split("## Combinations")[1].split("\n## ")[0]
    assert [rule.name for rule in RULES if f"`{rule.name}`" not in table] == []


def test_card_example_on_gpu_drops_fullgraph_and_raises_recompile_limit(make_cfg):
    plan = plan_for(make_cfg, H200, "quant=nf4", "compile=max_autotune", "offload=model")
    assert plan.compile.kwargs == {"mode": "max-autotune", "fullgraph": False, "dynamic": None}
    assert plan.compile.dynamo == {"capture_dynamic_output_shape_ops": True, "cache_size_limit": 1000}
    # offloaded weights live on the CPU: quantized there (once; then kept), never whole on the GPU first
    assert plan.load.device_map == "cpu" and plan.load.bitsandbytes_on_cpu
    assert plan.place.method == "model" and plan.place.kwargs == {"device": "cuda:0"} and plan.place.pinned
    assert [note.split(" (")[0] for note in plan.notes] == [
        "quantize on the CPU: device_map=cpu, diffusers' GPU-only check lifted",
        "compile.fullgraph: true -> false", "compile.dynamo += {'cache_size_limit': 1000}"]


def test_without_offload_bitsandbytes_quantizes_on_the_gpu(make_cfg):
    plan = plan_for(make_cfg, H200, "quant=nf4")
    assert plan.load.device_map is None and not plan.load.bitsandbytes_on_cpu
    assert plan.load.store and plan.load.quant_components  # kept for the next run either way


def test_model_offload_pins_unless_told_not_to(make_cfg):
    assert plan_for(make_cfg, H200, "offload=model").place.pinned
    assert not plan_for(make_cfg, H200, "offload=model", "offload.pin_memory=false").place.pinned
    assert not plan_for(make_cfg, H200, "offload=group_block").place.pinned  # group offload pins by itself


@pytest.mark.parametrize("offload", ["group_block", "group_leaf"])
def test_four_bit_state_follows_its_weights_under_group_offload(offload, make_cfg):
    plan = plan_for(make_cfg, H200, "quant=nf4", f"offload={offload}")
    assert plan.place.quant_state_follows and plan.load.device_map == "cpu"
    assert not plan_for(make_cfg, H200, "quant=nf4", "offload=model").place.quant_state_follows


def test_compile_without_offload_keeps_fullgraph(make_cfg):
    plan = plan_for(make_cfg, H200, "quant=nf4", "compile=max_autotune")
    assert plan.compile.kwargs["fullgraph"] is True
    assert "cache_size_limit" not in plan.compile.dynamo
    assert plan.notes == []


def test_record_stream_goes_with_the_streams_where_they_follow_the_device(make_cfg):
    kwargs = plan_for(make_cfg, CPU, "offload=group_block", "offload.record_stream=true").place.kwargs
    assert (kwargs["use_stream"], kwargs["record_stream"]) == (False, False)
    kwargs = plan_for(make_cfg, H200, "offload=group_block", "offload.record_stream=true").place.kwargs
    assert (kwargs["use_stream"], kwargs["record_stream"]) == (True, True)


def test_group_offload_streams_follow_the_device(make_cfg):
    assert plan_for(make_cfg, H200, "offload=group_block").place.kwargs["use_stream"] is True
    assert plan_for(make_cfg, CPU, "offload=group_block").place.kwargs["use_stream"] is False
    assert plan_for(make_cfg, H200, "offload=group_block", "offload.use_stream=false").place.kwargs["use_stream"] is False


@pytest.mark.parametrize("target,overrides,rule", [
    (H200, ["quant=int8", "offload=group_block"], "bitsandbytes_int8_block_group_offload"),
    (H200, ["quant=int8", "offload=group_block", "offload.use_stream=false"], "bitsandbytes_int8_block_group_offload"),
    (CPU, ["run.memory_limit_gib=4"], "memory_cap_needs_cuda"),
    (H200, ["quant=fp4", "offload=sequential"], "bitsandbytes_4bit_sequential_offload"),
    (AMPERE, ["quant=torchao_fp8"], "fp8_needs_sm89"),
    (CPU, ["quant=torchao_fp8"], "fp8_needs_sm89"),
    (CPU, ["offload=sequential"], "sequential_needs_accelerator"),
    (H200, ["model=tiny_sd3", "compile=regional"], "regional_needs_repeated_blocks"),
    (CPU, ["offload=group_leaf", "offload.use_stream=false", "offload.record_stream=true"],
     "record_stream_needs_stream"),
    (H200, ["offload=group_leaf", "offload.use_stream=false", "offload.record_stream=true"],
     "record_stream_needs_stream"),
    (CPU, ["quant=gguf_q8_0", "tweaks=fuse_qkv"], "fuse_qkv_gguf"),
])
@pytest.mark.slow
def test_refusals(target, overrides, rule, make_cfg):
    with pytest.raises(QcoError, match=rule) as error:
        plan_for(make_cfg, target, *overrides)
    assert all(line.startswith("refused before loading") and "fix:" in line for line in error.value.lines)


@pytest.mark.parametrize("target,overrides", [
    (H200, ["quant=nf4", "offload=group_leaf"]),  # leaf level with streams runs (gpu_matrix.md)
    (H200, ["quant=nf4", "offload=group_block", "run.memory_limit_gib=4"]),  # the state follows its weights
    (H200, ["quant=int8", "offload=group_leaf"]),  # leaf level with streams runs (gpu_matrix.md)
    (H200, ["quant=int8", "offload=sequential"]),
    (H200, ["quant=nf4", "offload=model"]),
    (H200, ["quant=torchao_fp8", "compile=max_autotune"]),
    (H200, ["offload=group_leaf", "offload.record_stream=true"]),  # streams come on with CUDA
])
def test_runs_that_are_not_refused(target, overrides, make_cfg):
    pytest.importorskip("torchao")
    plan_for(make_cfg, target, *overrides)


@pytest.mark.parametrize("compile_", ["regional", "max_autotune"])
def test_layerwise_casting_compiles_without_fullgraph(compile_, make_cfg):
    plan = plan_for(make_cfg, H200, "quant=layerwise_fp8", f"compile={compile_}")
    assert plan.compile.kwargs["fullgraph"] is False
    assert any("no_fullgraph_with_layerwise_casting" in note for note in plan.notes)
    assert plan.load.store is None  # cast at every load: nothing to keep


def test_several_refusals_are_reported_together(make_cfg):
    with pytest.raises(QcoError) as error:
        plan_for(make_cfg, CPU, "quant=torchao_fp8", "offload=sequential")
    assert len(error.value.lines) == 2


def test_quantized_components_follow_the_model(make_cfg):
    assert plan_for(make_cfg, CPU, "quant=nf4").load.quant_components == ["transformer", "text_encoder_2"]
    assert plan_for(make_cfg, CPU, "model=tiny_sd3", "quant=nf4").load.quant_components == [
        "transformer", "text_encoder_3"]
    with pytest.raises(QcoError) as error:  # never an unquantized model measured under nf4's name
        plan_for(make_cfg, CPU, "quant=nf4", "quant.components=[transformer,text_encoder_3]")
    (line,) = error.value.lines
    assert "quantize_only_existing_components: quant.components=['transformer', 'text_encoder_3']: the model " \
           "has no text_encoder_3" in line and "fix: name only the model's components" in line


def test_video_denoiser_compiles_without_channels_last(make_cfg):
    """A Conv3d's 5-D weight cannot take torch.channels_last (measured: RuntimeError on tiny_wan)."""
    plan = plan_for(make_cfg, H200, "model=tiny_wan", "quant=nf4", "compile=max_autotune")
    assert plan.video and plan.compile.channels_last is False
    assert [note.split(" (")[0] for note in plan.notes] == ["compile.channels_last: true -> false"]
    assert plan_for(make_cfg, H200, "quant=nf4", "compile=max_autotune").compile.channels_last is True
