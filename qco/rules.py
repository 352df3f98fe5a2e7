"""Every rule about combinations, in one table. A rule either adjusts the plan (and the run logs
one line saying what changed and why) or refuses it before any weights load, with one line that
says why and what to do instead. The reasons come from runs recorded in benchmarks/README.md and
benchmarks/results/, and from the tests; a rule without a measured reason does not belong here."""

import importlib.util
from dataclasses import dataclass
from typing import Callable, List, Optional

import diffusers

from qco.errors import QcoError
from qco.plan import Plan


@dataclass(frozen=True)
class Rule:
    name: str
    when: Callable[[Plan], bool]
    reason: str  # one line: printed in a refusal and logged with an adjustment
    adjust: Optional[Callable[[Plan], str]] = None  # returns what it changed; None: refuse
    fix: str = ""  # for a refusal: what the user can run instead
    detail: Optional[Callable[[Plan], str]] = None  # for a refusal: what in this plan it is about
    evidence: str = ""  # the measurement behind the reason (error, versions, card), as README's rules table has it


def _bitsandbytes(plan: Plan) -> bool:
    return (plan.load.quant_backend or "").startswith("bitsandbytes")


def _offloading(plan: Plan) -> bool:
    return plan.place.method is not None


def _compiling(plan: Plan) -> bool:
    return plan.compile.method is not None


def _exporting(plan: Plan) -> bool:
    return plan.compile.method == "aoti"


def _hooked(plan: Plan) -> List[str]:
    """What in the plan works through hooks on the denoiser's blocks and layers."""
    return [name for name, on in (
        (f"offload={plan.place.method}", _offloading(plan)), (f"a step cache ({plan.cache.method})", plan.cache.method),
        ("quant=layerwise_casting", plan.load.quant_backend == "layerwise_casting"),
        (f"parallel={plan.parallel.method}", _parallel(plan))) if on]


def _missing_quant_components(plan: Plan) -> str:
    missing = [c for c in plan.load.quant_components if c not in plan.components]
    return f"quant.components={list(plan.load.quant_components)}: the model has no {', '.join(missing)}; " \
           f"its components: {', '.join(sorted(plan.components))}"


def _fullgraph_off(plan: Plan) -> str:
    plan.compile.kwargs["fullgraph"] = False
    return "compile.fullgraph: true -> false"


def _recompile_limit(plan: Plan) -> str:
    plan.compile.dynamo.update(plan.compile.dynamo_with_offload)
    return f"compile.dynamo += {plan.compile.dynamo_with_offload}"


def _streams_on(plan: Plan) -> bool:
    """Whether group offload prefetches on a stream: as set, or where null, as streams_where_cuda sets it
    (refusals are judged before adjustments, so they ask this rather than read the null)."""
    use_stream = plan.place.kwargs["use_stream"]
    return plan.target.is_cuda if use_stream is None else bool(use_stream)


def _stream_where_cuda(plan: Plan) -> str:
    kwargs = plan.place.kwargs
    kwargs["use_stream"] = _streams_on(plan)
    note = f"offload.use_stream: null -> {str(kwargs['use_stream']).lower()}"
    if kwargs["record_stream"] and not kwargs["use_stream"]:  # it marks the stream's tensors: none here
        kwargs["record_stream"] = False
        note += ", offload.record_stream: true -> false"
    return note


def _bitsandbytes_cpu_load(plan: Plan) -> str:
    plan.load.device_map = "cpu"
    plan.load.bitsandbytes_on_cpu = True
    return "quantize on the CPU: device_map=cpu, diffusers' GPU-only check lifted"


def _quant_state_follows(plan: Plan) -> str:
    plan.place.quant_state_follows = True
    return "bitsandbytes' 4-bit quantization state follows its weights"


def _channels_last_off(plan: Plan) -> str:
    plan.compile.channels_last = False
    return "compile.channels_last: true -> false"


def _quantize_after_fusion(plan: Plan) -> str:
    denoiser = plan.tune.component
    plan.load.quant_components = [c for c in plan.load.quant_components if c != denoiser]
    plan.tune.quantize_after_fusion = {"method": plan.load.quant_method, "kwargs": plan.load.quant_kwargs}
    return f"{denoiser}: quantized after fusion with torchao's quantize_, not at load"


def _vae_channels_last_off(plan: Plan) -> str:
    plan.tune.vae_channels_last = False
    return "tweaks.vae_channels_last: true -> false"


def _fusing_quantized(plan: Plan, backend_prefix: str) -> bool:
    return (plan.tune.fuse_qkv and (plan.load.quant_backend or "").startswith(backend_prefix)
            and plan.tune.component in plan.load.quant_components)


# attention backends that run without CUDA; the others are CUDA kernels
CPU_ATTENTION = ("native", "_native_math", "flex")
# attention backends that need a package of their own
ATTENTION_PACKAGES = {"flash": "flash_attn", "flash_varlen": "flash_attn", "_flash_3": "flash_attn_interface",
                      "_flash_varlen_3": "flash_attn_interface", "sage": "sageattention",
                      "sage_varlen": "sageattention", "xformers": "xformers"}


def _attention_package_missing(plan: Plan) -> bool:
    package = ATTENTION_PACKAGES.get(plan.tune.attention_backend or "")
    return package is not None and importlib.util.find_spec(package) is None


def _no_regional_blocks(plan: Plan) -> bool:
    cls = getattr(diffusers, plan.denoiser_class, None)
    return plan.compile.method == "regional" and cls is not None and not getattr(cls, "_repeated_blocks", None)


def _fp8_unsupported(plan: Plan) -> bool:
    fp8 = (plan.load.quant_method or "").startswith("Float8")
    return fp8 and not (plan.target.is_cuda and plan.target.capability >= (8, 9))


def _parallel(plan: Plan) -> bool:
    return plan.parallel.world_size > 1


def _too_few_gpus(plan: Plan) -> bool:
    from qco.sweep.devices import visible_gpus  # nvidia-smi: this process does not start CUDA for a count

    return _parallel(plan) and plan.target.is_cuda and visible_gpus() < plan.parallel.world_size


def _no_context_parallel_plan(plan: Plan) -> bool:
    cls = getattr(diffusers, plan.denoiser_class, None)
    return _parallel(plan) and cls is not None and not getattr(cls, "_cp_plan", None)


def _backend_without_context_parallel(plan: Plan) -> bool:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    supported = getattr(_AttentionBackendRegistry, "_supports_context_parallel", None)  # filled as backends register
    backend = plan.tune.attention_backend
    return _parallel(plan) and backend is not None and supported is not None and backend not in supported


RULES: List[Rule] = [
    # --- refusals: the combination cannot run here; nothing is loaded ---
    Rule("parallel_needs_cuda",
         when=lambda p: _parallel(p) and not p.target.is_cuda,
         detail=lambda p: f"parallel.degree={p.parallel.world_size}",
         reason="diffusers' context parallelism places each rank on an accelerator, and a CPU is none",
         evidence="enable_parallelism puts rank r on accelerator r % torch.accelerator.device_count(), which is 0 "
                  "without one (ZeroDivisionError; diffusers 0.42.1, torch 2.13, two processes over gloo)",
         fix="run.device=cuda on a machine with parallel.degree GPUs, or parallel=none"),
    Rule("parallel_needs_as_many_gpus",
         when=_too_few_gpus,
         detail=lambda p: f"parallel.degree={p.parallel.world_size}",
         reason="context parallelism runs one process per GPU, and fewer GPUs are visible",
         evidence="one process per GPU: two ranks on one GPU would share its memory and time and measure neither "
                  "(the visible GPUs: CUDA_VISIBLE_DEVICES, or nvidia-smi)",
         fix="parallel.degree=<the GPUs you have>, or make more visible (CUDA_VISIBLE_DEVICES; under "
             "hydra/launcher=slurm, hydra.launcher.gpus_per_node=<the degree>)"),
    Rule("parallel_needs_a_context_parallel_plan",
         when=_no_context_parallel_plan,
         detail=lambda p: f"{p.denoiser_class} with parallel={p.parallel.method}",
         reason="diffusers splits a denoiser by its _cp_plan, and this one has none",
         evidence="enable_parallelism shards the inputs and gathers the outputs where the model's _cp_plan says; "
                  "Flux and Wan have one in diffusers 0.42.1, SD3 does not",
         fix="parallel=none, or model=flux_dev / wan21_t2v_14b"),
    Rule("parallel_without_offload",
         when=lambda p: _parallel(p) and _offloading(p),
         detail=lambda p: f"parallel={p.parallel.method} with offload={p.place.method}",
         reason="each rank holds the whole model to work on its share of the tokens; offload hooks move it away",
         evidence="context parallelism splits activations, not weights: every rank keeps the whole denoiser on "
                  "its GPU, and offload hooks that move weights off it between calls defeat that (diffusers' "
                  "context-parallel examples place the pipeline with pipe.to(device))",
         fix="offload=none (each GPU needs the model's memory), or parallel=none to offload on one GPU"),
    Rule("parallel_attention_backend",
         when=_backend_without_context_parallel,
         detail=lambda p: f"attention.backend={p.tune.attention_backend}",
         reason="this attention backend has no context-parallel path in diffusers",
         evidence="diffusers registers which backends support context parallelism "
                  "(supports_context_parallel): native, _native_cudnn, _native_flash and flash among them",
         fix="attention=native_cudnn, native_flash or default"),
    Rule("ring_needs_log_sum_exp",
         when=lambda p: p.parallel.ring_degree > 1 and p.tune.attention_backend in (None, "native"),
         detail=lambda p: f"parallel={p.parallel.method} with attention.backend={p.tune.attention_backend}",
         reason="ring attention merges partial results by their log-sum-exp, which torch's native SDPA does not return",
         evidence="every rank failed with 'Native attention does not support return_lse=True' (ring attention, "
                  "2 H100s, diffusers 0.42.1, the default backend)",
         fix="attention=native_cudnn or native_flash"),
    Rule("torchao_installed",
         when=lambda p: p.load.quant_backend == "torchao" and importlib.util.find_spec("torchao") is None,
         reason="quant.backend=torchao needs the torchao package, which is not installed",
         fix="pip install torchao (a release built for your torch), or choose quant=nf4 / int8"),
    Rule("sdnq_installed",
         when=lambda p: p.load.quant_backend == "sdnq" and importlib.util.find_spec("sdnq") is None,
         reason="quant.backend=sdnq needs the sdnq package (diffusers' SDNQ quantizer calls it), not installed",
         fix="pip install 'qco[sdnq]' (or pip install sdnq)"),
    Rule("lora_needs_peft",
         when=lambda p: bool(p.lora.adapters) and importlib.util.find_spec("peft") is None,
         reason="lora.adapters need the peft package (diffusers' load_lora_weights calls it), not installed",
         fix="pip install 'qco[lora]' (or pip install peft)"),
    Rule("lora_unfused_with_fuse_qkv",
         when=lambda p: bool(p.lora.adapters) and not p.lora.fuse and p.tune.fuse_qkv,
         reason="fused QKV projections bypass the q, k and v LoRA layers: the image would be the one without them",
         evidence="lora=random lora.targets=[to_q,to_k,to_v] tweaks=fuse_qkv made the very image tweaks=fuse_qkv "
                  "makes without the adapter (tiny Flux, CPU, diffusers 0.42.1, peft 0.21.2): "
                  "fuse_qkv_projections concatenates the base weights only",
         fix="lora.fuse=true (merged before the projections are fused), or tweaks.fuse_qkv=false"),
    Rule("lora_fuse_gguf",
         when=lambda p: bool(p.lora.adapters) and p.lora.fuse and p.load.quant_backend == "gguf",
         reason="fuse_lora cannot merge into GGUF's packed blocks; load the adapter unfused (lora.fuse=false)",
         evidence="fuse_lora on a GGUF Q8_0 denoiser: RuntimeError: The size of tensor a (68) must match the size "
                  "of tensor b (64) at non-singleton dimension 1 (tiny Flux, CPU, peft 0.21.2)",
         fix="lora.fuse=false with a GGUF denoiser"),
    Rule("lora_fuse_sdnq",
         when=lambda p: bool(p.lora.adapters) and p.lora.fuse and p.load.quant_backend == "sdnq",
         reason="fuse_lora cannot merge into SDNQ's int8 weights; load the adapter unfused (lora.fuse=false)",
         evidence="fuse_lora on an SDNQ int8 denoiser: RuntimeError: result type BFloat16 can't be cast to the "
                  "desired output type Char (tiny Flux, CPU, sdnq 0.2.8, peft 0.21.2)",
         fix="lora.fuse=false with SDNQ"),
    Rule("gguf_installed",
         when=lambda p: p.load.quant_backend == "gguf" and importlib.util.find_spec("gguf") is None,
         reason="quant.backend=gguf needs the gguf package (it writes and reads GGUF files), which is not installed",
         fix="pip install 'qco[gguf]' (or pip install gguf)"),
    Rule("quantize_only_existing_components",
         when=lambda p: bool(p.load.quant_components) and p.components is not None
         and not set(p.load.quant_components) <= p.components,
         detail=_missing_quant_components,
         reason="a component the model lacks cannot be quantized, and leaving it out would mislabel the run",
         evidence="a component the model does not have cannot be quantized, and leaving it out would measure a "
                  "less quantized model under the quantization's name",
         fix="name only the model's components, e.g. quant.components=[transformer]"),
    Rule("fp8_needs_sm89", when=_fp8_unsupported,
         reason="float8 matmuls need a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper)",
         fix="run it on such a GPU, or choose quant=torchao_int8wo / nf4"),
    Rule("sequential_needs_accelerator",
         when=lambda p: p.place.method == "sequential" and not p.target.is_cuda,
         reason="sequential offload streams each layer to an accelerator; on a CPU accelerate fails in its hooks",
         evidence="enable_sequential_cpu_offload streams each layer to an accelerator; with the CPU as "
                  "execution device accelerate fails inside its hooks at the first call",
         fix="on a CPU use offload=model or offload=group_block (their hooks run on CPU)"),
    Rule("streams_need_cuda",
         when=lambda p: p.place.method == "group" and p.place.kwargs["use_stream"] and not p.target.is_cuda,
         reason="group offload with use_stream=true overlaps copies on a CUDA stream; there is none on a CPU",
         fix="offload.use_stream=null (on where there is CUDA) or offload.use_stream=false"),
    Rule("record_stream_needs_stream",
         when=lambda p: p.place.method == "group" and p.place.kwargs["record_stream"]
         and p.place.kwargs["use_stream"] is False,
         reason="record_stream marks the tensors copied on the prefetch stream, and streams are off",
         evidence="record_stream marks the tensors copied on the prefetch stream, so there must be one "
                  "(diffusers: ValueError: `record_stream` cannot be True when `use_stream=False`); "
                  "streams are off here (offload.use_stream=false)",
         fix="offload.record_stream=false, or on a CUDA GPU offload.use_stream=null"),
    Rule("bitsandbytes_4bit_compile_on_cpu",
         when=lambda p: p.load.quant_backend == "bitsandbytes_4bit" and _compiling(p) and not p.target.is_cuda
         and p.compile.mode != "max-autotune",
         reason="bitsandbytes repacks 4-bit weights in the first CPU forward, which code compiled in this mode replays",
         evidence="bitsandbytes repacks 4-bit weights for its CPU kernel inside the first forward, and code "
                  "compiled in this mode replays the repacking on packed weights (AssertionError: expected "
                  "size 2048==64; torch 2.13 + bitsandbytes 0.50.2, full and regional alike); "
                  "mode max-autotune runs",
         fix="compile=max_autotune or compile.mode=max-autotune, or quant=int8 / torchao_int8wo"),
    Rule("memory_cap_needs_cuda",
         when=lambda p: p.memory_limit_gib is not None and not p.target.is_cuda,
         reason="the cap is the CUDA allocator's: on a CPU it would not hold, and would claim a fit never tested",
         evidence="run.memory_limit_gib caps the CUDA caching allocator, and a CPU run has none: the cap would "
                  "not hold, and the run would claim a fit that was never tested",
         fix="run.memory_limit_gib=null on a CPU (its host memory is recorded as host_peak_gib), or run.device=cuda"),
    Rule("bitsandbytes_int8_block_group_offload",
         when=lambda p: p.load.quant_backend == "bitsandbytes_8bit" and p.target.is_cuda
         and p.place.method == "group" and p.place.kwargs["offload_type"] == "block_level",
         reason="block-level group offload leaves int8's scales (SCB) on the CPU under weights on the GPU",
         evidence="block-level group offload moves the blocks' weights' storage (param.data) one way and whole "
                  "modules (module.to) the other, and bitsandbytes' int8 keeps its scales (SCB) in an attribute "
                  "beside each weight, which is left on the CPU: 'Expected a cuda device, but got: cpu' (streams on "
                  "or off; diffusers 0.42.1, bitsandbytes 0.50.2, H200: benchmarks/results/gpu_matrix.md); the "
                  "4-bit types run, their state follows the weights (bitsandbytes_4bit_state_follows_weights)",
         fix="offload=group_leaf with int8 (leaf level with streams runs), or quant=nf4 with group_block"),
    Rule("bitsandbytes_4bit_sequential_offload",
         when=lambda p: p.load.quant_backend == "bitsandbytes_4bit" and p.target.is_cuda
         and p.place.method == "sequential",
         reason="sequential offload re-creates weights from the meta device, which 4-bit parameters cannot do",
         evidence="sequential offload re-creates each weight from the meta device at every call, which "
                  "bitsandbytes' 4-bit parameters cannot do (NotImplementedError: Cannot copy out of meta "
                  "tensor; no data!, in accelerate's set_module_tensor_to_device; H200)",
         fix="offload=group_leaf or offload=model, or quant=int8 (which runs with sequential offload)"),
    Rule("fuse_qkv_bitsandbytes", when=lambda p: _fusing_quantized(p, "bitsandbytes"),
         reason="fusing concatenates q, k and v into a new Linear, which bitsandbytes' packed weights cannot become",
         evidence="fuse_qkv_projections concatenates the q, k and v weights into a new Linear, and "
                  "bitsandbytes' packed uint8 weights cannot become one (RuntimeError: Only Tensors of floating "
                  "point and complex dtype can require gradients; bitsandbytes quantizes at load only)",
         fix="tweaks.fuse_qkv=false with bitsandbytes, or quant=torchao_int8wo / torchao_fp8 (quantized after "
             "fusion)"),
    Rule("fuse_qkv_gguf", when=lambda p: _fusing_quantized(p, "gguf"),
         reason="fusing concatenates q, k and v into a new Linear, which GGUF's packed blocks cannot become",
         evidence="fuse_qkv_projections on a GGUF Q8_0 denoiser: RuntimeError: Only Tensors of floating point and "
                  "complex dtype can require gradients (tiny Flux, CPU, diffusers 0.42.1, gguf 0.19)",
         fix="tweaks.fuse_qkv=false with a GGUF denoiser, or quant=torchao_int8wo (quantized after fusion)"),
    Rule("attention_backend_needs_cuda",
         when=lambda p: p.tune.attention_backend is not None and p.tune.attention_backend not in CPU_ATTENTION
         and not p.target.is_cuda,
         reason="this attention backend is a CUDA kernel (cuDNN, FlashAttention, memory-efficient, ...)",
         fix="attention=native or attention=default on a CPU"),
    Rule("attention_backend_package", when=_attention_package_missing,
         reason="this attention backend calls a package of its own, which is not installed",
         fix="install it (e.g. pip install flash-attn for attention=flash), or attention=native_cudnn / "
             "native_flash (torch's own kernels)"),
    Rule("regional_needs_repeated_blocks", when=_no_regional_blocks,
         reason="compile_repeated_blocks compiles the denoiser's _repeated_blocks, and this class lists none",
         evidence="compile_repeated_blocks compiles the classes listed in the denoiser's _repeated_blocks, "
                  "and this denoiser class lists none",
         fix="compile=default or compile=max_autotune (whole-module compile)"),
    Rule("aoti_runs_no_hooks_inside",
         when=lambda p: _exporting(p) and bool(_hooked(p)),
         detail=lambda p: f"compile=aoti with {', '.join(_hooked(p))}",
         reason="the package runs the whole denoiser as one program, so hooks on its blocks and layers never run",
         evidence="cache=first_block compile=aoti ran every step in the package while the cache's own state "
                  "counted 0 of 2 steps computed; quant=layerwise_fp8 and offload=group_block stopped torch.export "
                  "(RuntimeError: _apply(): Couldn't swap Linear.weight; tiny Flux, CPU, torch 2.13, diffusers "
                  "0.42.1); model offload would move the weights the package holds as its constants",
         fix="compile=regional (its compiled blocks run inside the hooks), or compile=aoti without them"),
    Rule("aoti_cuda_graphs_need_cuda",
         when=lambda p: _exporting(p) and p.compile.cuda_graphs and not p.target.is_cuda,
         reason="compile.cuda_graphs replays the package's call from a CUDA graph, and a CPU has none",
         evidence="torch.cuda.Stream and torch.cuda.CUDAGraph on a machine without CUDA: RuntimeError: "
                  "torch.cuda.Stream requires CUDA support (torch 2.13, CPU)",
         fix="compile=aoti (without CUDA graphs) on a CPU, or run.device=cuda"),
    Rule("aoti_packed_weights",
         when=lambda p: _exporting(p) and (_bitsandbytes(p) or p.load.quant_backend == "gguf"),
         detail=lambda p: f"compile=aoti with quant.backend={p.load.quant_backend}",
         reason="torch.export cannot trace these quantized layers, whose weights carry their state beside the tensor",
         evidence="torch.export of the denoiser: nf4: RuntimeError: Creating a new Tensor subclass Params4bit but "
                  "the raw Tensor object is already associated to a python object of type FakeTensor; int8: "
                  "AttributeError: 'FakeTensor' object has no attribute 'CB'; gguf_q8_0: RuntimeError: a and b must "
                  "have same reduction dim, but got [256, 64] X [68, 64] (tiny Flux, CPU, torch 2.13, bitsandbytes "
                  "0.50.2, gguf 0.19); torchao's and SDNQ's weights export",
         fix="quant=torchao_int8wo, torchao_fp8 or sdnq_int8 with compile=aoti, or compile=regional"),
    Rule("aoti_swaps_only_by_hotswap",
         when=lambda p: _exporting(p) and bool(p.lora.swap_to) and not p.lora.hotswap,
         reason="the package holds the first adapter's tensors as its constants, and unloading it does not reach them",
         evidence="lora=hotswap lora.hotswap=false compile=aoti: each swap unloaded the adapter and loaded the next "
                  "into new tensors, which the package, exported once, never reads (0 graphs compiled for either; "
                  "tiny Flux, CPU); a hotswap copies each adapter into the same tensors",
         fix="lora.hotswap=true, or compile=regional"),
    # --- adjustments: the combination runs once these change; each is logged ---
    Rule("torchao_quantizes_after_fusion",
         when=lambda p: _fusing_quantized(p, "torchao"),
         adjust=_quantize_after_fusion,
         reason="torchao's quantized tensors cannot be concatenated, so the denoiser is fused first, then quantized",
         evidence="fuse_qkv_projections concatenates the q, k and v weights, which torchao's quantized tensors "
                  "cannot do (NotImplementedError: Int8Tensor dispatch: unimplemented aten.cat; torchao 0.18), "
                  "so the denoiser is fused first and quantized after, as diffusers-torchao does"),
    Rule("no_fullgraph_with_step_cache",
         when=lambda p: p.cache.method is not None and _compiling(p) and p.compile.kwargs.get("fullgraph"),
         adjust=_fullgraph_off,
         reason="step caches decide in compiler-disabled code, which a fullgraph compile cannot trace",
         evidence="step caches decide at run time whether to skip, in functions marked torch.compiler.disable, "
                  "which a fullgraph compile cannot trace (torch._dynamo.exc.Unsupported: Skip inlining "
                  "TaylorSeerCacheHook._measure_should_compute; torch 2.13)"),
    Rule("vae_channels_last_is_4d_only",
         when=lambda p: p.tune.vae_channels_last and p.video,
         adjust=_vae_channels_last_off,
         reason="a video VAE's 3-D convolutions have 5-D weights; channels_last is a layout of 4-D tensors",
         evidence="a video VAE's convolutions are 3-D, with 5-D weights, and channels_last is a layout of 4-D "
                  "tensors (RuntimeError: required rank 4 tensor to use channels_last format; AutoencoderKLWan)"),
    Rule("bitsandbytes_4bit_state_follows_weights",
         when=lambda p: p.load.quant_backend == "bitsandbytes_4bit" and p.place.method == "group",
         adjust=_quant_state_follows,
         reason="group offload moves a weight but not its 4-bit quantization state; a hook moves the state with it",
         evidence="group offload moves each weight's storage (param.data) but not bitsandbytes' quantization state "
                  "(absmax, code), an attribute beside it, so a weight could reach the GPU without its state "
                  "(CUBLAS_STATUS_EXECUTION_FAILED at block level, H200); a hook inside group offload's moves the "
                  "state to the weight's device before each 4-bit layer runs; streamed groups never move it back, so "
                  "there it stays (1.0 GiB for nf4 Flux: absmax in float32, 1/8 of the 4-bit weights' bytes)"),
    Rule("streams_where_cuda",
         when=lambda p: p.place.method == "group" and p.place.kwargs["use_stream"] is None,
         adjust=_stream_where_cuda,
         reason="prefetching on a CUDA stream overlaps copies with compute; a CPU has no streams",
         evidence="prefetching on a CUDA stream overlaps transfers with compute; a CPU has no streams (and "
                  "record_stream, which marks the stream's tensors, goes with them)"),
    Rule("bitsandbytes_on_cpu",
         when=lambda p: _bitsandbytes(p) and not p.target.is_cuda,
         adjust=_bitsandbytes_cpu_load,
         reason="bitsandbytes runs on a CPU, but diffusers refuses without a GPU unless the weights load to the CPU",
         evidence="bitsandbytes >= 0.48 runs nf4/fp4/int8 on CPU, but diffusers refuses without a GPU "
                  "('No GPU found') and quantizes on a GPU unless the weights are placed on the CPU at load"),
    Rule("bitsandbytes_4bit_loads_on_the_cpu_when_offloading",
         when=lambda p: p.load.quant_backend == "bitsandbytes_4bit" and p.target.is_cuda and _offloading(p),
         adjust=_bitsandbytes_cpu_load,
         reason="offloaded weights live on the host; quantized on the GPU they would all be there first",
         evidence="offloaded weights live on the CPU, but bitsandbytes quantizes onto the GPU, so every quantized "
                  "component would first be whole on the GPU (10.35 GiB for Flux at load: more than a small card "
                  "has); on the CPU it is slower (Flux: 124.5 s against about 9 s on an H100), once: the "
                  "quantized components are kept (paths.quantized) and later runs load them"),
    Rule("no_fullgraph_across_offload_hooks",
         when=lambda p: _compiling(p) and _offloading(p) and p.compile.kwargs.get("fullgraph"),
         adjust=_fullgraph_off,
         reason="offload hooks call torch.compiler.disable, which a fullgraph compile cannot trace",
         evidence="offload hooks call torch.compiler.disable, which a fullgraph compile cannot trace "
                  "(torch._dynamo.exc.Unsupported: Attempted to call function marked as skipped); "
                  "the guide compiles without fullgraph when offloading"),
    Rule("no_fullgraph_with_layerwise_casting",
         when=lambda p: _compiling(p) and p.load.quant_backend == "layerwise_casting"
         and p.compile.kwargs.get("fullgraph"),
         adjust=_fullgraph_off,
         reason="layerwise casting's hooks make a new Parameter for each cast, which a fullgraph compile cannot "
                "trace",
         evidence="quant=layerwise_fp8 compile=regional: torch._dynamo.exc.Unsupported: Attempted to use "
                  "`torch.nn.Parameter()` constructor with Dynamo (tiny Flux, CPU, torch 2.13, diffusers 0.42.1)"),
    Rule("channels_last_is_4d_only",
         when=lambda p: _compiling(p) and p.compile.channels_last and p.video,
         adjust=_channels_last_off,
         reason="a video denoiser patchifies with a Conv3d, whose 5-D weight cannot take channels_last",
         evidence="torch.channels_last is a layout of 4-D tensors, and a video denoiser patchifies with a Conv3d "
                  "whose weight is 5-D (RuntimeError: required rank 4 tensor to use channels_last format; "
                  "WanTransformer3DModel, torch 2.13); its Linear layers are the same either way"),
    Rule("recompile_limit_with_offload",
         when=lambda p: _compiling(p) and _offloading(p) and bool(p.compile.dynamo_with_offload),
         adjust=_recompile_limit,
         reason="offload hooks move weights between calls and trigger recompiles; the guide raises the limit",
         evidence="offload hooks move weights between calls and trigger recompiles; the guide raises "
                  "dynamo's cache_size_limit so that they do not fall back to eager"),
]


def apply_rules(plan: Plan, combination: str) -> Plan:
    """Refuse what cannot run (all reasons at once), then adjust what must change, in table order.
    `combination` names the choices as the user wrote them, for the refusal lines."""
    refusals = [f"{rule.name}: {rule.detail(plan) + ': ' if rule.detail else ''}{rule.reason}; fix: {rule.fix}"
                for rule in RULES if rule.adjust is None and rule.when(plan)]
    if refusals:
        raise QcoError([f"refused before loading ({combination} on {plan.target.device}): {line}"
                        for line in refusals])
    for rule in RULES:
        if rule.adjust is not None and rule.when(plan):
            plan.notes.append(f"{rule.adjust(plan)} ({rule.name}: {rule.reason})")  # logged with the plan, once
    return plan
