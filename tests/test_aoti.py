"""compile=aoti for real: the tiny model's denoiser exported with torch.export, compiled by AOTInductor into a
package on this CPU, kept by the compile store and loaded by a second process that compiles nothing; a LoRA
hotswapped under the package; and what it refuses, each with its one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qco.errors import QcoError
from qco.plan import draft_plan
from qco.rules import apply_rules
from qco.stores.compiled import PACKAGE, store_key
from qco.validate import check_values
from tests.helpers import build, generate, qco_cli
from tests.test_rules import CPU, H200, plan_for
# torchao's weights are tensor subclasses, which torch.export takes apart into plain tensors: the package's
# constants are then found by those parts' names (qco/groups/compile.py _constants)
RUN = ["compile=aoti", "quant=torchao_int8wo", "run.steps=2", "run.repeats=1", "run.device=cpu"]


@pytest.fixture(scope="module")
def aoti_runs(tmp_path_factory, models_cache):
    """A cold run into an empty store, then a warm one. Inductor's cache is the session's: it cannot hand a run
    an AOTInductor package (only the store does), and it spares each process inductor's probe of the CPU."""
    tmp = tmp_path_factory.mktemp("aoti")
    records = {}
    for name in ("cold", "warm"):
        result = qco_cli([*RUN, f"hydra.run.dir={tmp / name}"], tmp, models_cache, timeout=600,
                         QCO_COMPILE_CACHE=str(tmp / "store"))
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = json.loads((tmp / name / "results.json").read_text())
    return tmp, records


@pytest.mark.slow
def test_a_cold_run_exports_the_denoiser_and_keeps_one_package(aoti_runs):
    from qco.files import FILES_MARKER, damage

    tmp, records = aoti_runs
    cold = records["cold"]["compile_cache"]
    assert cold["start"] == "cold" and cold["graphs_compiled"] == 1 and cold["saved"]
    folder = Path(cold["folder"])
    assert folder.parent == tmp / "store" and damage(folder) is None  # whole: its checksum holds
    assert (folder / PACKAGE).stat().st_size == cold["bytes"]
    marker = json.loads((folder / FILES_MARKER).read_text())
    assert marker["key"]["compile"]["method"] == "aoti"
    # what the package was made for, which a warm start checks its calls against
    assert marker["inputs"]["hidden_states"] == [[1, 256, 64], "torch.bfloat16"]
    assert marker["inputs"]["return_dict"] == "False"
    # the package computes the model: against the reference (eager, unquantized), as close as eager int8 is
    assert records["cold"]["quality"]["psnr_db"] > 35


@pytest.mark.slow
def test_a_warm_run_loads_the_package_compiles_nothing_and_makes_the_same_image(aoti_runs):
    tmp, records = aoti_runs
    warm, cold = records["warm"]["compile_cache"], records["cold"]["compile_cache"]
    assert warm["start"] == "warm" and warm["folder"] == cold["folder"] and warm["load_s"] is not None
    assert warm["graphs_compiled"] == 0 and not warm["saved"]
    pixels = [np.asarray(Image.open(tmp / name / "image_0.png")) for name in ("cold", "warm")]
    assert np.array_equal(*pixels)


@pytest.mark.slow
def test_another_size_in_the_same_process_is_one_clear_error(aoti_runs, make_cfg):
    """The package was exported for 64x64; loaded as a warm start does, a call at 96x96 through it is refused
    before it reaches the kernels (AOTInductor does not check its inputs: a kernel would read past its buffers)."""
    from qco.files import FILES_MARKER
    from qco.groups.compile import exported_denoiser

    _, records = aoti_runs
    cfg = make_cfg(*RUN)
    plan, pipe = build(cfg)
    exported = exported_denoiser(pipe, plan.compile)
    folder = Path(records["cold"]["compile_cache"]["folder"])
    exported.use(folder / PACKAGE, json.loads((folder / FILES_MARKER).read_text())["inputs"])
    assert len(generate(pipe, cfg, plan)) == 1  # at the size it was exported for
    with pytest.raises(QcoError, match=r"exported for hidden_states of shape \(1, 256, 64\) \(torch.bfloat16\), "
                                         r"and this call's is of shape \(1, 576, 64\).*fix: one size"):
        generate(pipe, make_cfg(*RUN, "run.height=96", "run.width=96"), plan)


@pytest.mark.slow
def test_a_hotswapped_adapter_reaches_the_package(make_cfg):
    """A hotswap copies the next adapter into the tensors the package holds as constants: its image is the one
    eager diffusers makes with that adapter loaded. In float32, where the package and eager agree to rounding: a
    random adapter moves the tiny model's image by about a quarter of a level, bf16's kernels by more."""
    from qco.groups.lora import swap_adapters

    run = ["run.steps=2", "run.device=cpu", "run.dtype=float32"]
    cfg = make_cfg("compile=aoti", "lora=hotswap", "lora.swap_to=[{name: second, rank: 16, seed: 2}]", *run)
    plan, pipe = build(cfg)
    first = np.asarray(generate(pipe, cfg, plan)[0], dtype=np.float32)
    swapped = []
    swap_adapters(pipe, plan.lora, lambda: swapped.append(generate(pipe, cfg, plan)[0]) or 0.0)
    eager_cfg = make_cfg("lora=hotswap", "lora.adapters=[{name: second, rank: 16, seed: 2}]", "lora.swap_to=[]", *run)
    eager_plan, eager_pipe = build(eager_cfg)
    eager = np.asarray(generate(eager_pipe, eager_cfg, eager_plan)[0], dtype=np.float32)
    after = np.asarray(swapped[0], dtype=np.float32)
    assert np.abs(after - eager).mean() < 0.01  # measured: 8e-5 of a level
    assert np.abs(after - first).mean() > 0.1  # measured: 0.24: the swap changed what the package computes
    # a scale is a literal in the package: changed after export, it is refused, never silently ignored
    layer = next(m for m in pipe.transformer.modules() if isinstance(getattr(m, "scaling", None), dict))
    layer.scaling["swapped"] = 0.5
    with pytest.raises(QcoError, match="compile=aoti: a LoRA adapter's scale changed"):
        generate(pipe, cfg, plan)


@pytest.mark.slow
def test_a_video_denoiser_with_buffers_outside_its_state_dict_runs(make_cfg):
    """Wan's rotary tables are buffers kept out of its state_dict (persistent=False), and constants of the package
    all the same: found among the module's buffers."""
    from qco.groups.compile import exported_denoiser

    cfg = make_cfg("model=tiny_wan", "compile=aoti", "run.steps=1", "run.device=cpu")
    plan, pipe = build(cfg)
    (image,) = generate(pipe, cfg, plan)
    assert exported_denoiser(pipe, plan.compile).package is not None and np.asarray(image).std() > 0


def test_a_forward_already_replaced_is_refused(make_cfg):
    """A hook that replaced the denoiser's forward (accelerate's, diffusers') would be bypassed by the package."""
    from qco.groups.compile import compile_denoiser

    cfg = make_cfg("compile=aoti", "run.device=cpu")
    plan, pipe = build(make_cfg("run.device=cpu"))
    pipe.transformer.forward = lambda *args, **kwargs: None
    step = apply_rules(draft_plan(cfg, CPU), "compile=aoti").compile
    with pytest.raises(QcoError, match="compile=aoti: pipe.transformer.forward is already replaced.*fix:"):
        compile_denoiser(pipe, step)


@pytest.mark.parametrize("overrides, rule", [
    (["offload=model"], "aoti_runs_no_hooks_inside"),
    (["offload=group_block"], "aoti_runs_no_hooks_inside"),
    (["cache=first_block"], "aoti_runs_no_hooks_inside"),
    (["quant=layerwise_fp8"], "aoti_runs_no_hooks_inside"),
    (["quant=nf4"], "aoti_packed_weights"),
    (["quant=int8"], "aoti_packed_weights"),
    (["quant=gguf_q8_0"], "aoti_packed_weights"),
    (["lora=hotswap", "lora.hotswap=false"], "aoti_swaps_only_by_hotswap"),
])
def test_what_the_package_cannot_run_is_refused_before_loading(overrides, rule, make_cfg):
    with pytest.raises(QcoError) as refused:
        plan_for(make_cfg, H200, "compile=aoti", *overrides)
    (line,) = refused.value.lines
    assert f"{rule}:" in line and "fix:" in line


def test_what_it_runs_with_on_a_gpu(make_cfg):
    for overrides in (["quant=torchao_fp8"], ["quant=sdnq_int8"], ["lora=hotswap"], ["compile=aoti_cuda_graphs"],
                      ["compile=aoti_max_autotune", "tweaks=fuse_qkv"]):
        plan = plan_for(make_cfg, H200, "compile=aoti", *overrides)
        assert plan.compile.method == "aoti"
    plan = plan_for(make_cfg, H200, "compile=aoti_max_autotune")
    assert plan.compile.kwargs["inductor_configs"]["max_autotune"] is True  # the mode's flags, given to AOTInductor
    assert plan.compile.kwargs["inductor_configs"]["aot_inductor.package_constants_in_so"] is False  # no weights
    assert "aoti_compile_and_package" in "\n".join(plan.describe())


def test_cuda_graphs_are_refused_on_a_cpu(make_cfg):
    with pytest.raises(QcoError, match="aoti_cuda_graphs_need_cuda:.*fix: compile=aoti"):
        plan_for(make_cfg, CPU, "compile=aoti_cuda_graphs")


@pytest.mark.parametrize("overrides, needle", [
    (["compile=aoti", "compile.dynamic=true"], "compile.dynamic=true with compile.method=aoti"),
    (["compile=aoti", "compile.mode=max-autotune"], "compile.mode=max-autotune with compile.method=aoti"),
    (["compile=regional", "compile.cuda_graphs=true"], "compile.cuda_graphs=true with compile.method=regional"),
])
def test_settings_it_cannot_take_are_one_line_each(overrides, needle, make_cfg):
    problems = check_values(make_cfg(*overrides))
    assert len(problems) == 1 and problems[0].startswith(needle) and "fix:" in problems[0]


def test_the_package_key_names_the_adapters_whose_layers_it_holds(make_cfg):
    from qco.stores.models import resolve_source

    def key(*overrides):
        cfg = make_cfg("run.device=cpu", *overrides)
        plan = apply_rules(draft_plan(cfg, CPU), "")
        plan.load.source = resolve_source(cfg.model, cfg.paths.models)
        return store_key(plan, {"height": 64, "width": 64, "frames": None, "batch": 1, "guidance": cfg.run.guidance})

    assert key("compile=aoti", "lora=random")["lora"]["names"] == ["random"]
    assert key("compile=aoti", "lora=random") != key("compile=aoti", "lora=random", "lora.adapters.0.name=other")
    assert key("compile=regional", "lora=random")["lora"]["names"] is None  # torch.compile's graphs: by shape only
    # scales and guidance are in an aoti package (literals, the batch SD3 doubles); a hotswap's scale too
    assert key("compile=aoti", "lora=hotswap") != key("compile=aoti", "lora=hotswap", "lora.scale=0.5")
    assert key("compile=regional", "lora=hotswap") == key("compile=regional", "lora=hotswap", "lora.scale=0.5")
    assert key("compile=aoti", "run.guidance=1.0") != key("compile=aoti", "run.guidance=7.0")
    assert key("compile=regional", "run.guidance=1.0") == key("compile=regional", "run.guidance=7.0")
