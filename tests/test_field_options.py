"""The options the field uses beside bitsandbytes and torchao, for real on the tiny model on CPU: GGUF files
(written by the gguf package, read back, loaded with from_single_file), layerwise casting (fp8 storage),
LoRA adapters (built with peft, loaded with load_lora_weights, hotswapped under compile) and sizes under a
dynamic compile."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qco.compose import compose_pipeline
from qco.runner import check_and_plan, resolve_files
from tests.helpers import assert_real_image, assert_refused, build, generate, qco_cli


def _compose(cfg):
    plan = check_and_plan(cfg)
    resolve_files(plan, cfg)
    pipe, seconds, store, _ = compose_pipeline(plan)
    return plan, pipe, store, seconds


def _gguf_layers(pipe):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    return [m for m in pipe.transformer.modules() if isinstance(m, GGUFLinear)]


# --- GGUF ---

@pytest.mark.parametrize("option,qtype", [("gguf_q8_0", "Q8_0"), ("gguf_q4_0", "Q4_0")])
@pytest.mark.slow
def test_gguf_file_is_written_once_read_back_and_loaded(option, qtype, make_cfg, tmp_path):
    import gguf

    cfg = make_cfg(f"quant={option}", "run.device=cpu", f"paths.quantized={tmp_path}")
    plan, pipe, store, seconds = _compose(cfg)
    assert store["written"] and not store["loaded"] and "keep_s" in seconds
    file = tmp_path / store["file"].split(str(tmp_path) + "/")[1]
    # the file read back by gguf's own reader: the matrices in the type, the rest (biases, norms) F32
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(file)).tensors}
    assert types["transformer_blocks.0.attn.to_q.weight"] == qtype and types["norm_out.linear.bias"] == "F32"
    assert store["tensors"][qtype] == sum(1 for t in types.values() if t == qtype)
    layers = _gguf_layers(pipe)
    assert layers and all(layer.weight.quant_type.name == qtype for layer in layers)
    assert_real_image(generate(pipe, cfg, plan)[0])

    _, _, again, _ = _compose(cfg)  # the next run loads the kept file: nothing written
    assert again["loaded"] and not again["written"] and again["file"] == store["file"]

    data = bytearray(file.read_bytes())  # an altered file is written again, never loaded
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    _, _, healed, _ = _compose(cfg)
    assert healed["written"] and gguf.GGUFReader(str(file)).tensors


@pytest.mark.slow
def test_a_given_gguf_file_loads_as_a_download_does(make_cfg, tmp_path):
    """quant.kwargs.gguf_file: loaded from where it lies, nothing written to the store."""
    _, _, written, _ = _compose(make_cfg("quant=gguf_q8_0", "run.device=cpu", f"paths.quantized={tmp_path / 'a'}"))
    given = tmp_path / "flux-tiny-Q8_0.gguf"
    given.write_bytes(open(written["file"], "rb").read())
    cfg = make_cfg("quant=gguf_q8_0", f"quant.kwargs.gguf_file={given}", "run.device=cpu",
                   f"paths.quantized={tmp_path / 'b'}")
    plan, pipe, store, _ = _compose(cfg)
    assert store["file"] == str(given) and not store["loaded"] and "written" not in store
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    assert _gguf_layers(pipe)
    assert_real_image(generate(pipe, cfg, plan)[0])


@pytest.mark.slow
def test_a_k_quant_without_a_file_and_a_mislabelled_file_are_refused(tmp_path, models_cache, make_cfg):
    # the gguf package reads Q4_K but cannot write it: qco cannot make one, and says so
    result = qco_cli(["quant=gguf_q4_k", "run.device=cpu", "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "quant.kwargs.gguf_type=Q4_K", "cannot write it", "quant.kwargs.gguf_file=")
    _, _, written, _ = _compose(make_cfg("quant=gguf_q8_0", "run.device=cpu", f"paths.quantized={tmp_path / 'q'}"))
    result = qco_cli(["quant=gguf_q4_k", f"quant.kwargs.gguf_file={written['file']}", "run.device=cpu",
                      "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "no Q4_K tensor", "mislabelled")
    result = qco_cli(["quant=gguf_q8_0", f"quant.kwargs.gguf_file={tmp_path / 'none.gguf'}", "run.dry_run=true"],
                     tmp_path, models_cache)
    assert_refused(result, "no such .gguf file")


# --- layerwise casting ---

@pytest.mark.parametrize("option,dtype", [("layerwise_fp8", torch.float8_e4m3fn),
                                          ("layerwise_fp8_e5m2", torch.float8_e5m2)])
@pytest.mark.slow
def test_layerwise_casting_stores_fp8_and_computes_in_run_dtype(option, dtype, make_cfg):
    cfg = make_cfg(f"quant={option}", "run.device=cpu")
    plan, pipe = build(cfg)
    block = pipe.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.dtype == dtype  # stored narrow between calls
    assert pipe.transformer.norm_out.linear.weight.dtype == torch.bfloat16  # diffusers leaves norms alone
    seen = []  # (the weight's dtype once its call is over, the output's): computed in bf16, stored narrow again
    block.attn.to_q.register_forward_hook(lambda m, args, out: seen.append((m.weight.dtype, out.dtype)))
    assert_real_image(generate(pipe, cfg, plan)[0])
    assert seen and all(s == (dtype, torch.bfloat16) for s in seen)


@pytest.mark.slow
def test_layerwise_casting_under_group_offload(make_cfg):
    cfg = make_cfg("quant=layerwise_fp8", "offload=group_leaf", "run.device=cpu")
    plan, pipe = build(cfg)
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert_real_image(generate(pipe, cfg, plan)[0])


def test_layerwise_casting_on_a_transformers_component_is_one_line(make_cfg):
    from qco.errors import QcoError

    cfg = make_cfg("quant=layerwise_fp8", "quant.components=[text_encoder]", "run.device=cpu")
    with pytest.raises(QcoError, match="is not a diffusers model"):
        build(cfg)


def test_options_files_list_every_gguf_type_qco_writes():
    """The gguf options qco ships are types the installed gguf package writes, or need a file (the K-quants)."""
    from qco.stores.gguf import writable
    from tests.conftest import REPO

    for path in sorted((REPO / "conf" / "quant").glob("gguf_*.yaml")):
        text = path.read_text()
        qtype = text.split("gguf_type:")[1].split()[0]
        assert writable(qtype) or "gguf_file" in text, path.name
    assert writable("Q8_0") and not writable("Q4_K")



@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_threads_write_the_same_gguf_file_as_one(qtype, tmp_path):
    """The denoiser's tensors are quantized in a pool of threads (a 12B model takes minutes on one core): the file
    is byte for byte the one a single thread writes, tensors in the same order."""
    from safetensors.torch import save_file

    from qco.stores.gguf import write_gguf

    generator = torch.Generator().manual_seed(0)
    save_file({f"blocks.{i}.weight": torch.randn(64, 256, generator=generator, dtype=torch.bfloat16)
               for i in range(12)} | {"norm.bias": torch.randn(7, generator=generator)}, tmp_path / "a.safetensors")
    one = write_gguf(tmp_path / "one.gguf", tmp_path, qtype, workers=1)
    four = write_gguf(tmp_path / "four.gguf", tmp_path, qtype, workers=4)
    assert one == four == {qtype: 12, "F32": 1}
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "four.gguf").read_bytes()
# --- LoRA ---

def _image(cfg):
    plan, pipe = build(cfg)
    return np.asarray(generate(pipe, cfg, plan)[0], dtype=np.float32), pipe


@pytest.mark.slow
def test_a_random_adapter_is_built_once_with_non_zero_weights_and_changes_the_image(make_cfg):
    from safetensors.torch import load_file

    from qco.quality import psnr

    cfg = make_cfg("lora=random", "run.device=cpu")
    plan = check_and_plan(cfg)
    resolve_files(plan, cfg)
    folder = Path(plan.lora.adapters[0]["file"])
    weights = load_file(folder / "pytorch_lora_weights.safetensors")
    ups = [w for name, w in weights.items() if "lora_B" in name]
    assert ups and all(w.abs().sum() > 0 for w in ups)  # peft's own init would leave B at zero
    assert all(name.startswith("transformer.") for name in weights)  # diffusers' LoRA format
    built = (folder / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    plan_again = check_and_plan(cfg)
    resolve_files(plan_again, cfg)  # the next run finds it: not built again
    assert (folder / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == built

    with_adapter, pipe = _image(cfg)
    assert pipe.get_active_adapters() == ["random"]
    without, _ = _image(make_cfg("run.device=cpu"))
    assert psnr(with_adapter, without) is not None  # a different image


@pytest.mark.slow
def test_a_given_adapter_file_loads_like_the_same_weights_built(make_cfg, tmp_path):
    cfg = make_cfg("lora=random", "run.device=cpu")
    plan = check_and_plan(cfg)
    resolve_files(plan, cfg)
    given = tmp_path / "my_lora.safetensors"
    given.write_bytes((Path(plan.lora.adapters[0]["file"]) / "pytorch_lora_weights.safetensors").read_bytes())
    built, _ = _image(cfg)
    loaded, pipe = _image(make_cfg("lora=random", f"lora.adapters.0.path={given}", "run.device=cpu"))
    assert (loaded == built).all()


@pytest.mark.slow
def test_two_adapters_are_active_with_their_weights(make_cfg):
    _, pipe = _image(make_cfg("lora=two", "lora.scale=2", "run.device=cpu"))
    assert pipe.get_active_adapters() == ["first", "second"]
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    # peft's scaling: the adapter's weight (times lora.scale) times alpha / rank, alpha = rank for qco's adapters
    assert layer.scaling["first"] == pytest.approx(0.7 * 2) and layer.scaling["second"] == pytest.approx(0.3 * 2)


@pytest.mark.parametrize("quant", ["none", "nf4", "int8", "torchao_int8wo"])
@pytest.mark.slow
def test_a_fused_adapter_makes_the_unfused_image(quant, make_cfg):
    """fuse_lora merges the adapter into the weights, quantized ones too (peft dequantizes, merges and quantizes
    again): the LoRA layers are gone, the image is the unfused one within rounding, and not the base model's."""
    from qco.quality import psnr

    base, _ = _image(make_cfg(f"quant={quant}", "run.device=cpu"))
    unfused, _ = _image(make_cfg(f"quant={quant}", "lora=random", "lora.scale=8", "run.device=cpu"))
    fused, pipe = _image(make_cfg(f"quant={quant}", "lora=random", "lora.scale=8", "lora.fuse=true",
                                  "run.device=cpu"))
    assert not any("lora" in name for name, _ in pipe.transformer.named_modules())
    assert psnr(fused, unfused) > psnr(fused, base) + 6  # much nearer the adapted image than the base one


@pytest.mark.parametrize("quant", ["gguf_q8_0", "sdnq_int8", "layerwise_fp8"])
@pytest.mark.slow
def test_an_adapter_on_the_other_bases_changes_the_image(quant, make_cfg):
    from qco.quality import psnr

    base, _ = _image(make_cfg(f"quant={quant}", "run.device=cpu"))
    adapted, pipe = _image(make_cfg(f"quant={quant}", "lora=random", "lora.scale=8", "run.device=cpu"))
    assert pipe.get_active_adapters() == ["random"]
    assert psnr(adapted, base) < 45  # the adapter's change, beyond the base's rounding


@pytest.mark.slow
def test_hotswap_under_compile_swaps_without_recompiling(tmp_path, models_cache):
    """lora=hotswap: two adapters (one of another rank) swapped into a regionally compiled denoiser; torch's
    counter says no graph was compiled for either. Without hotswap the rank change recompiles, which the record
    shows too."""
    result = qco_cli(["lora=hotswap", "compile=regional", "run.device=cpu", f"hydra.run.dir={tmp_path / 'hot'}"],
                     tmp_path, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "hot" / "results.json").read_text())
    swaps = record["lora"]["swaps"]
    assert [s["adapter"] for s in swaps] == ["second", "third"] and record["lora"]["hotswap"]
    assert record["compile_cache"]["graphs"] > 0 and all(s["graphs_compiled"] == 0 for s in swaps)
    result = qco_cli(["lora=hotswap", "lora.hotswap=false", "compile=regional", "run.device=cpu",
                      f"hydra.run.dir={tmp_path / 'cold'}"], tmp_path, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    swaps = json.loads((tmp_path / "cold" / "results.json").read_text())["lora"]["swaps"]
    assert swaps[1]["graphs_compiled"] > 0  # rank 16 -> 8: new shapes, new graphs


# --- sizes under compile ---

def test_a_static_compile_keys_each_size_and_a_dynamic_one_all_sizes(make_cfg):
    """The compile store's key: one per size and batch for a static compile (each is its own graphs), one for
    every size and batch under compile=regional_dynamic (the sizes are symbolic in its graphs)."""
    from qco.stores.compiled import store_folder, store_key
    from qco.stores.models import resolve_source

    def folder(option, height, batch=1):
        cfg = make_cfg(f"compile={option}", "run.device=cpu")
        plan = check_and_plan(cfg)
        plan.load.source = resolve_source(cfg.model, cfg.paths.models)
        key = store_key(plan, {"height": height, "width": 64, "frames": None, "batch": batch})
        return store_folder(cfg.paths.compile_cache, plan, key)

    assert len({folder("regional", 64), folder("regional", 96), folder("regional", 64, batch=2)}) == 3
    assert len({folder("regional_dynamic", 64), folder("regional_dynamic", 96),
                folder("regional_dynamic", 64, batch=2)}) == 1
    assert folder("regional_dynamic", 64) != folder("regional", 64)


@pytest.mark.slow
def test_a_dynamic_compile_serves_a_sweep_over_sizes_from_one_compile(tmp_path, models_cache):
    """compile=regional_dynamic over two heights: the first compiles, the second starts warm from its artifacts
    and compiles nothing. The sweep has its own empty inductor cache, so what it compiles is counted, not found
    from another test's compile. (A static compile compiles each size: its keys differ, the test above.)"""
    sweep = tmp_path / "sweep"
    result = qco_cli(["-m", "compile=regional_dynamic", "run.height=64,96", "run.device=cpu", "run.repeats=1",
                      "run.quality=false", f"hydra.sweep.dir={sweep}"], tmp_path, models_cache, timeout=900,
                     QCO_COMPILE_CACHE=str(tmp_path / "store"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in sweep.glob("*/results.json")), key=lambda r: r["started_at"])
    assert [r["config"]["run"]["height"] for r in records] == [64, 96]
    caches = [r["compile_cache"] for r in records]
    assert [c["start"] for c in caches] == ["cold", "warm"] and caches[0]["folder"] == caches[1]["folder"]
    assert caches[0]["graphs_compiled"] > 0 and caches[1]["graphs_compiled"] == 0
    assert caches[1]["graphs_from_cache"] == caches[0]["graphs_compiled"]
