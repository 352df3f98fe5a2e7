"""The store of compiled artifacts: compile once, start warm after. After a run compiles, torch's portable cache
artifacts (torch.compiler.save_cache_artifacts: inductor's FX graphs with their Triton kernels, AOTAutograd's
graphs, autotuning results) are kept under paths.compile_cache, in a folder named by a hash of everything they
depend on: the model's architecture, what is applied to it, shapes and dtype, the libraries' versions and the
device. The next run of the same key loads them (torch.compiler.load_cache_artifacts) before its first call, so
torch finds its graphs in its own caches instead of compiling them. Nothing here holds compiled code of its own.
compile=aoti keeps its AOTInductor package instead (denoiser.pt2, kernels without weights), which the next run
loads in place of exporting and compiling (ExportedDenoiser.use).

A changed key is another folder, never a stale load. A folder that was cut short or altered since it was written
(its checksum, qco/files.py damage) or that torch cannot load is removed with a warning and written
again after the calls. Folders are written whole (write_folder_atomic) under a lock, so jobs of one sweep that
share the store never leave half an artifact. compile.cache=false turns every cache off (inductor's
force_disable_caches): a cold start, measured as one."""

import hashlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from qco.files import (
    FILES_MARKER,
    VERIFIED,
    damage,
    fingerprint,
    folder_lock,
    not_yours,
    write_folder_atomic,
)
from qco.plan import Plan
from qco.record import CompileCache
from qco.report import package_versions
from qco.stores.quantized import source_folder

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts.bin"
PACKAGE = "denoiser.pt2"  # compile=aoti's
LIBRARIES = ("torch", "triton", "diffusers", "transformers", "bitsandbytes", "torchao")


def _architecture(source: Path, component: str) -> Optional[str]:
    """The hash of the denoiser's config.json and the pipeline's model_index.json: what its graphs are made of."""
    digest = hashlib.sha256()
    for path in (source / "model_index.json", source / component / "config.json"):
        if not path.is_file():
            return None
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def device_name(device: str) -> str:
    """The device the kernels are built for: a GPU's name and compute capability, or the CPU's."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return " ".join(part for part in ("cpu", platform.machine(), platform.processor(), _cpu_features()) if part)


def _cpu_features() -> str:
    """A hash of the CPU's model and instruction-set flags (/proc/cpuinfo): inductor builds CPU kernels for the
    machine it runs on (-march=native), which another CPU of the same architecture may not execute."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return hashlib.sha256("\n".join(sorted(set(wanted))).encode()).hexdigest()[:12] if wanted else ""


def store_key(plan: Plan, call: Dict[str, object]) -> Optional[dict]:
    """Everything the compiled artifacts depend on; None where the model's files cannot be identified."""
    source = source_folder(plan.load)  # a built model's folder, model.path, or a hub model's cached snapshot
    architecture = _architecture(source, plan.compile.component) if source is not None else None
    if architecture is None:
        return None
    load, aoti = plan.load, plan.compile.method == "aoti"
    return {
        "model": plan.model, "architecture": architecture, "dtype": str(load.dtype),
        "compile": {"method": plan.compile.method, "kwargs": plan.compile.kwargs,
                    "channels_last": plan.compile.channels_last, "dynamo": plan.compile.dynamo,
                    "dynamo_with_offload": plan.compile.dynamo_with_offload, "inductor": plan.compile.inductor},
        "quant": {"backend": load.quant_backend, "method": load.quant_method, "kwargs": load.quant_kwargs,
                  "components": sorted(load.quant_components)},
        "tune": {"fuse_qkv": plan.tune.fuse_qkv, "after_fusion": plan.tune.quantize_after_fusion,
                 "attention": plan.tune.attention_backend},
        "cache": {"method": plan.cache.method, "kwargs": plan.cache.kwargs},
        # LoRA layers are in the graphs by their shapes; their weights are inputs, and under hotswap their
        # scales too, so which adapter it is (seed, file) is not part of the key, its rank and weight are
        "lora": {"ranks": [a.get("file_rank") or a["rank"] for a in plan.lora.adapters], "fuse": plan.lora.fuse,
                 "hotswap": plan.lora.hotswap, "targets": plan.lora.targets if plan.lora.adapters else [],
                 # an AOTInductor package names its constants, the adapters' layers among them, by adapter name
                 "names": [a["name"] for a in plan.lora.adapters] if aoti else None,
                 # (an AOTInductor package holds each scale as a literal: for compile=aoti they are part of it)
                 "weights": None if plan.lora.hotswap and not aoti else [a["weight"] * plan.lora.scale
                                                                         for a in plan.lora.adapters]},
        # each rank of a split image compiles for its share of the tokens (qco/ranks.py)
        "parallel": {"ulysses": plan.parallel.ulysses_degree, "ring": plan.parallel.ring_degree},
        "offload": {"method": plan.place.method, "others": plan.place.others_offload_type,
                    "kwargs": {k: v for k, v in plan.place.kwargs.items() if k not in ("device", "onload_device")}},
        # height, width, frames, batch: what static graphs are specialised to; a dynamic compile's graphs take any
        # size, so its artifacts serve every size (a sweep over sizes compiles once)
        # (and the guidance: with it, SD3 and Wan call the denoiser on a doubled batch, which a package is made for)
        "shapes": None if plan.compile.kwargs.get("dynamic") else
        {name: value for name, value in call.items() if name != "guidance" or aoti},
        "versions": package_versions(LIBRARIES), "python": platform.python_version(),
        "device": device_name(plan.target.device),
    }


def store_folder(root: str, plan: Plan, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root).expanduser() / f"{plan.model}-{plan.compile.method}-{digest}"


def _counters() -> Dict[str, int]:
    """torch's own count of graphs made, found in and missing from its caches, in this process so far."""
    from torch._dynamo.utils import counters

    return {"from_cache": counters["inductor"]["fxgraph_cache_hit"],
            "compiled": counters["inductor"]["fxgraph_cache_miss"],
            "not_cacheable": counters["inductor"]["fxgraph_cache_bypass"],
            "graphs": counters["stats"]["unique_graphs"]}


def _compile_seconds() -> Dict[str, float]:
    """torch's timers of compiling (dynamo tracing, AOT autograd, inductor, Triton builds, autotuning), summed
    by name over this process so far."""
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    return {name: float(value) for name, value in zip(names, values)}


class CompileStore:
    """Load before the first call, save after the calls, and say what happened (a CompileCache)."""

    def __init__(self, folder: Optional[Path], key: Optional[dict], enabled: bool, exported=None):
        # the key as written beside the artifacts, frozen: nothing done during the calls can change what it says
        self.folder, self.key, self.enabled = folder, json.loads(json.dumps(key, default=str)), enabled
        self.exported = exported  # compile=aoti's ExportedDenoiser: the package is kept instead of torch's caches
        self.file = PACKAGE if exported is not None else ARTIFACTS
        self.record = CompileCache(start="cold", folder=str(folder) if folder and enabled else None)
        self.before: Dict[str, int] = {}
        self.seconds_before: Dict[str, float] = {}

    def load(self) -> CompileCache:
        """Before the first call: the kept artifacts into torch's caches, where there are whole ones."""
        self.before, self.seconds_before = _counters(), _compile_seconds()
        if not self.enabled or self.folder is None or not self.folder.is_dir():
            return self.record
        start = time.perf_counter()
        try:
            foreign = not_yours(self.folder)
        except FileNotFoundError:  # replaced by another job of the sweep just now: judged below, under the lock
            foreign = None
        if foreign is not None:  # code a run would execute: only the user's own (README, "Configs cannot run code")
            log.warning("The kept compiled artifacts in %s are not loaded: %s; fix: remove that folder, or point "
                        "paths.compile_cache (QCO_COMPILE_CACHE) at a folder of your own", self.folder, foreign)
            self.record.error = f"not loaded: {foreign}"
            return self.record
        with folder_lock(self.folder):
            problem = damage(self.folder) if self.folder.is_dir() else "gone"
            if problem is None:
                marker = json.loads((self.folder / FILES_MARKER).read_text())
                if self.key != marker.get("key"):
                    problem = "its key differs from this run's"
                elif self.exported is not None and not isinstance(marker.get("inputs"), dict):
                    problem = "it does not record the inputs its package was made for"
            if problem is None:
                try:
                    if self.exported is not None:
                        self.exported.use(self.folder / PACKAGE, marker.get("inputs"))
                    else:
                        torch.compiler.load_cache_artifacts((self.folder / ARTIFACTS).read_bytes())
                except Exception as error:  # noqa: BLE001 - torch's own format errors: a cold start, not a crash
                    problem = f"torch could not load them ({type(error).__name__}: {str(error)[:200]})"
            if problem is not None:
                log.warning("The kept compiled artifacts in %s cannot be used (%s): removed, compiling again and "
                            "keeping the result", self.folder, problem)
                shutil.rmtree(self.folder, ignore_errors=True)
                self.record.error = problem
                return self.record
        self.record.start, self.record.load_s = "warm", time.perf_counter() - start
        self.record.bytes = (self.folder / self.file).stat().st_size
        log.info("Loaded the compiled artifacts kept in %s (%.1f s): a warm start", self.folder, self.record.load_s)
        return self.record

    def save(self) -> CompileCache:
        """After the calls: count what torch found and compiled, and keep the artifacts where this run compiled, or
        started cold and found its graphs in inductor's own local cache (torch records those artifacts too): the
        store then holds them whatever that machine-local cache held."""
        now = _counters()
        self.record.graphs_from_cache = now["from_cache"] - self.before.get("from_cache", 0)
        self.record.graphs_compiled = now["compiled"] - self.before.get("compiled", 0)
        self.record.graphs_not_cacheable = now["not_cacheable"] - self.before.get("not_cacheable", 0)
        self.record.graphs = now["graphs"] - self.before.get("graphs", 0)
        spent = {name: seconds - self.seconds_before.get(name, 0.0) for name, seconds in _compile_seconds().items()}
        self.record.phases_s = {name: round(seconds, 2) for name, seconds in
                                sorted(spent.items(), key=lambda item: -item[1]) if seconds >= 0.05}
        if self.exported is not None:  # one graph, exported whole: made here or loaded, never from torch's caches
            self.record.graphs = self.record.graphs_compiled = int(self.exported.package is not None)
        made = self.record.graphs_compiled > 0 or (self.record.start == "cold" and self.record.graphs_from_cache > 0)
        if not self.enabled or self.folder is None or not made:
            return self.record
        start = time.perf_counter()
        if self.exported is not None:
            data = self.exported.package.read_bytes()
        else:
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is None:
                return self.record
            data = artifacts[0]
        digest, name = hashlib.sha256(data).hexdigest(), self.file

        def fill(staging: Path) -> None:
            (staging / name).write_bytes(data)
            files = {name: {"bytes": len(data), "sha256": digest}}
            marker = {"key": self.key, "files": files}
            if self.exported is not None:  # what the package was made for: a warm start checks its calls against it
                marker["inputs"] = self.exported.shapes
            (staging / FILES_MARKER).write_text(json.dumps(marker, indent=1, default=str))
            (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name)}))

        try:
            with folder_lock(self.folder):
                if self.record.start == "warm":  # loaded, yet some graphs were compiled here: a fuller set replaces it
                    shutil.rmtree(self.folder, ignore_errors=True)
                # where another job of the sweep kept the same key first, theirs stays (write_folder_atomic)
                write_folder_atomic(self.folder, fill, finished=lambda kept: (kept / FILES_MARKER).is_file())
                kept = json.loads((self.folder / FILES_MARKER).read_text())["files"][name]["sha256"]
        except OSError as error:
            log.warning("The compiled artifacts were not kept (%s: %s): the next run compiles again; fix: point "
                        "paths.compile_cache (or QCO_COMPILE_CACHE) at a writable folder", error.strerror,
                        error.filename or self.folder)
            self.record.error = f"not kept: {error.strerror}"
            return self.record
        self.record.save_s = time.perf_counter() - start
        if kept != digest:  # another job of the sweep kept the same key first: theirs stay
            log.info("The compiled artifacts of this key were kept by another run first: %s", self.folder)
            return self.record
        self.record.saved, self.record.bytes = True, len(data)
        log.info("Kept the compiled artifacts in %s (%.1f MiB)", self.folder, len(data) / 2**20)
        return self.record


def open_store(plan: Plan, call: Dict[str, object], root: str, exported=None) -> Optional[CompileStore]:
    """The store for this run's compiled denoiser; None where nothing is compiled. `exported`: compile=aoti's
    ExportedDenoiser, whose package the store keeps."""
    if plan.compile.method is None:
        return None
    enabled = plan.compile.cache
    key = store_key(plan, call) if enabled else None
    if enabled and key is None:
        log.info("No compile store for %s: its model files cannot be identified", plan.model)
    return CompileStore(store_folder(root, plan, key) if key else None, key, enabled and key is not None, exported)
