"""The fast recipes' options, each alone, for real on the tiny model on CPU: fused QKV projections, a
channels_last VAE, an attention backend, step caches, torchao quantization after fusion, compile with
the recipes' inductor flags; and the combinations the rules refuse or adjust. The presets compose."""

import pytest
import torch

from qco.errors import QcoError
from tests.helpers import assert_real_image, build, build_counted, generate


def _attentions(pipe):
    return [m for m in pipe.transformer.modules() if hasattr(m, "fused_projections")]


@pytest.mark.slow
def test_fuse_qkv(make_cfg):
    cfg = make_cfg("tweaks=fuse_qkv", "run.device=cpu")
    plan, pipe = build(cfg)
    attentions = _attentions(pipe)
    assert attentions and all(a.fused_projections for a in attentions)
    assert all(hasattr(a, "to_qkv") or hasattr(a, "to_added_qkv") for a in attentions)
    assert_real_image(generate(pipe, cfg, plan)[0])


def test_vae_channels_last(make_cfg):
    cfg = make_cfg("tweaks=vae_channels_last", "run.device=cpu")
    plan, pipe = build(cfg)
    convs = [m.weight for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert_real_image(generate(pipe, cfg, plan)[0])


@pytest.mark.slow
def test_attention_backend(make_cfg):
    cfg = make_cfg("attention=native", "run.device=cpu")
    plan, pipe = build(cfg)
    processors = [a.processor for a in _attentions(pipe)]
    assert processors and all(str(p._attention_backend.value) == "native" for p in processors)
    assert_real_image(generate(pipe, cfg, plan)[0])


# each of diffusers' six step caches: the steps it reuses in 8 (StepCounter counts which wrapped modules ran their
# layers). The fixed schedules skip the same steps on any weights; the others decide by how much a step changes,
# on random weights here: MagCache follows FLUX.1-dev's ratios table, so it skips; first block and SeaCache, at
# their thresholds, find every step of the random tiny model changed enough to compute (counted, 0 reused).
CACHES = {"first_block": (0, 0), "sea": (0, 0), "taylorseer": (1, 7), "mag": (1, 7),
          "pyramid_attention_broadcast": (1, 7), "faster": (1, 7)}


@pytest.mark.parametrize("cache", sorted(CACHES))
@pytest.mark.slow
def test_step_cache(cache, make_cfg):
    cfg = make_cfg(f"cache={cache}", "run.device=cpu", "run.steps=8")
    plan, pipe, counter = build_counted(cfg)
    assert pipe.transformer.is_cache_enabled
    images = generate(pipe, cfg, plan, counter)
    counted = counter.summary()
    least, most = CACHES[cache]
    assert counted["steps"] == 8 and counted["modules"] > 0
    assert least <= counted["reused"] <= most and counted["computed"] + counted["reused"] == 8
    assert (counted["modules_computed"] < 1) == (counted["reused"] > 0)
    assert_real_image(images[0])


def test_torchao_quantizes_after_fusion(make_cfg):
    cfg = make_cfg("quant=torchao_int8wo", "tweaks=fuse_qkv", "run.device=cpu")
    plan, pipe = build(cfg)
    assert "transformer" not in plan.load.quant_components  # moved from load to after fusion, by a rule
    assert plan.tune.quantize_after_fusion["method"] == "Int8WeightOnlyConfig"
    fused = [a.to_qkv.weight for a in _attentions(pipe) if hasattr(a, "to_qkv")]
    assert fused and all(type(w).__module__.startswith("torchao") for w in fused)
    assert_real_image(generate(pipe, cfg, plan)[0])


@pytest.mark.slow
def test_step_cache_with_compile_runs_without_fullgraph(make_cfg):
    """The recipes' flags and max-autotune (without CUDA graphs) in a regional compile, with a step cache."""
    cfg = make_cfg("compile=regional_max_autotune", "cache=first_block", "run.device=cpu", "run.steps=4")
    plan, pipe = build(cfg)
    assert plan.compile.kwargs["fullgraph"] is False
    assert any(note.endswith(")") and "no_fullgraph_with_step_cache" in note for note in plan.notes)
    assert plan.compile.inductor["coordinate_descent_tuning"] is True
    assert_real_image(generate(pipe, cfg, plan)[0])


@pytest.mark.slow
def test_an_inductor_flag_changes_what_the_mode_sets(make_cfg):
    """torch applies a mode's own flags while it compiles, over any set before: a flag the mode also sets goes to
    torch.compile with the mode's other flags, as options, or it would be ignored. (Coordinate descent tuning
    runs on Triton kernels only: that it stays off is proven on the GPU, benchmarks/README.md.)"""
    plan, _ = build(make_cfg("compile=regional_max_autotune", "run.device=cpu"))
    assert plan.compile.kwargs["mode"] == "max-autotune-no-cudagraphs" and "options" not in plan.compile.kwargs
    cfg = make_cfg("compile=regional_max_autotune_quick", "run.device=cpu", "run.steps=1")  # sets it false
    plan, pipe = build(cfg)
    assert "mode" not in plan.compile.kwargs and plan.compile.mode == "max-autotune-no-cudagraphs"
    assert plan.compile.kwargs["options"] == {"max_autotune": True, "coordinate_descent_tuning": False}
    assert any("options={'max_autotune': True, 'coordinate_descent_tuning': False}" in line for line in plan.describe())
    assert_real_image(generate(pipe, cfg, plan)[0])  # torch.compile takes them (it refuses a mode with options)


@pytest.mark.parametrize("overrides,rule", [
    (["quant=nf4", "tweaks=fuse_qkv"], "fuse_qkv_bitsandbytes"),
    (["attention=native_cudnn"], "attention_backend_needs_cuda"),
    (["attention=flash"], "attention_backend_needs_cuda"),
])
def test_refused_before_loading(overrides, rule, make_cfg):
    with pytest.raises(QcoError, match=rule):
        build(make_cfg(*overrides, "run.device=cpu"))


def test_video_vae_stays_as_it_is(make_cfg):
    cfg = make_cfg("model=tiny_wan", "tweaks=fast", "run.device=cpu")
    plan, pipe = build(cfg)
    assert plan.tune.vae_channels_last is False and plan.tune.fuse_qkv is True
    assert_real_image(generate(pipe, cfg, plan)[0])


def test_attention_backends_that_download_kernels_are_refused(make_cfg):
    from qco.validate import check_names

    problems = check_names(make_cfg("attention.backend=flash_hub"))
    assert len(problems) == 1 and "downloads its kernels" in problems[0] and "fix:" in problems[0]


@pytest.mark.parametrize("experiment", ["fastest_flux", "leanest_flux"])
def test_presets_compose(experiment, make_cfg):
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import Target

    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.model.name == "flux_dev_random"
    plan = draft_plan(cfg, Target("cuda:0", capability=(9, 0), name="H100"))
    text = "\n".join(apply_rules(plan, experiment).describe())
    if experiment == "fastest_flux":
        assert "fuse_qkv_projections()" in text and "Float8DynamicActivationFloat8WeightConfig" in text
        assert "set_attention_backend('_native_cudnn')" in text and "compile_repeated_blocks" in text
    else:
        assert "enable_group_offload" in text and "offload_type=block_level" in text
        assert "the other components: offload_type=leaf_level" in text and "record_stream=True" in text
        assert "4-bit quantization state follows its weights" in text
