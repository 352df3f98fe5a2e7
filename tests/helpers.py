"""Build a pipeline from a composed config the way a run does, and the checks tests make on it;
run the real command line."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bitsandbytes as bnb
from accelerate.hooks import CpuOffload
import numpy as np
import torch

from qco.compose import compose_pipeline
from qco.measure import measure_calls
from qco.runner import check_and_plan, resolve_files
from qco.groups.run import call_kwargs

QUANTIZED_LAYER = {"nf4": bnb.nn.Linear4bit, "fp4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}


def build(cfg):
    plan, pipe, _ = build_counted(cfg)
    return plan, pipe


def build_counted(cfg):
    """The plan, the pipeline and what counts its step cache's steps (None without a cache)."""
    plan = check_and_plan(cfg)
    resolve_files(plan, cfg)
    pipe, _, _, counter = compose_pipeline(plan)
    return plan, pipe, counter


def generate(pipe, cfg, plan, watch=None):
    """The images of one call, as a run makes them (of a video: its first frame); `watch`: a step counter."""
    run = cfg.run
    measured = measure_calls(pipe, call_kwargs(run), run.seed, plan.target.device, warmup=0, repeats=1,
                             steps=run.steps, last_call_watches=[watch])
    return measured.images


def assert_real_image(image, size=(64, 64)):
    pixels = np.asarray(image, dtype=np.float32)
    assert image.size == size
    assert np.isfinite(pixels).all()
    assert pixels.std() > 0  # not a blank image


def assert_quantized(pipe, quant, components):
    for name in components:
        module = getattr(pipe, name)
        if quant in QUANTIZED_LAYER:
            layers = [m for m in module.modules() if isinstance(m, QUANTIZED_LAYER[quant])]
            assert layers, f"{name} has no {QUANTIZED_LAYER[quant].__name__}"
            if quant in ("nf4", "fp4"):
                assert layers[0].weight.quant_state.quant_type == quant
                assert layers[0].weight.dtype == torch.uint8
        elif quant.startswith("gguf"):  # diffusers' GGUF layers, holding the file's packed blocks
            from diffusers.quantizers.gguf.utils import GGUFLinear

            assert any(isinstance(m, GGUFLinear) for m in module.modules()), f"{name} has no GGUFLinear"
        elif quant.startswith("sdnq"):  # SD.Next's layers, their weights packed
            layers = [m for m in module.modules() if type(m).__name__ == "SDNQLinear"]
            assert layers and all(not m.weight.dtype.is_floating_point for m in layers), f"{name}: no SDNQLinear"
        elif quant.startswith("layerwise"):  # stored in fp8 between calls
            assert any(m.weight.dtype == torch.float8_e4m3fn for m in module.modules()
                       if isinstance(m, torch.nn.Linear)), f"{name} has no fp8 weights"
        else:  # torchao swaps the weights for its own tensor subclasses
            weights = [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]
            assert weights and all(type(w).__module__.startswith("torchao") for w in weights)


def count_calls(obj, method):
    """Count calls of a real hook method (it still runs)."""
    original = getattr(obj, method)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, method, counted)
    return calls


def attach_offload_probe(pipe, offload):
    if offload == "model":
        hook = pipe.transformer._hf_hook  # accelerate's CpuOffload (qco's pinned kind: a subclass)
        assert isinstance(hook, CpuOffload)
        return count_calls(hook, "pre_forward")
    if offload.startswith("group"):  # diffusers' hooks: on the blocks (block level) or the leaves
        hooks = [module._diffusers_hook.get_hook("group_offloading") for module in pipe.transformer.modules()
                 if hasattr(module, "_diffusers_hook")]
        hooks = [hook for hook in hooks if hook is not None and hook.group.onload_self]
        assert hooks, "no group offloading hook in the transformer"
        return count_calls(hooks[-1].group, "onload_")
    return None


def qco_env(models: Path, **env) -> dict:
    """The environment of a user's `python -m qco`: the tests' model cache, no hub, no HYDRA_FULL_ERROR."""
    environment = {**os.environ, "QCO_MODEL_CACHE": str(models), "HF_HUB_OFFLINE": "1", **env}
    environment.pop("HYDRA_FULL_ERROR", None)
    return environment


def qco_cli(args, cwd: Path, models: Path, timeout: float = 300, module: str = "qco", **env):
    """`python -m qco ARGS` in a fresh interpreter, as a user types it (no HYDRA_FULL_ERROR, no hub)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=qco_env(models, **env),
                          capture_output=True, text=True, timeout=timeout)


def write(folder: Path, relative: str, text: str) -> Path:
    """A file under folder (its folders made), its text dedented: a config, a planted module, a payload."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def assert_refused(result, *needles, lines=1):
    """Exit 2, no traceback, `lines` error lines (None: at least one), one holding all the needles."""
    from qco.errors import EXIT_USER_ERROR

    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    found = error_lines(result)
    assert found and (lines is None or len(found) == lines), result.stderr[-3000:]
    assert any(all(n in line for n in needles) for line in found), found


def error_lines(result):
    """The `qco: error:` lines of a command's stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("qco: error:")]


def table_rows(markdown: str):
    """The cells of a Markdown table's rows (header first, the separator left out), stripped of padding."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]
