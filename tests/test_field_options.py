"""The options the field uses beside bitsandbytes and torchao, for real on the tiny model on CPU: GGUF files
(written by the gguf package, read back, loaded with from_single_file), layerwise casting (fp8 storage),
LoRA adapters (built with peft, loaded with load_lora_weights, hotswapped under compile) and sizes under a
dynamic compile."""

import pytest
import torch

from qco.compose import compose_pipeline
from qco.stores.models import resolve_source
from qco.runner import check_and_plan
from tests.helpers import assert_real_image, assert_refused, build, generate, qco_cli


def _compose(cfg):
    plan = check_and_plan(cfg)
    plan.load.source = resolve_source(cfg.model, cfg.paths.models)
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
