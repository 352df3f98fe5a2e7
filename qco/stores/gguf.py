"""The GGUF files qco writes: nothing can be downloaded here, so the GGUF file of a model's denoiser is written
once, from its safetensors weights, by the gguf package's own writer and quantizers (gguf.GGUFWriter,
gguf.quants.quantize), into the store of quantized components (paths.quantized), in a folder named by the same
key as the other quantized copies, with the file's size and sha256; a run then loads it the way a user loads a
downloaded one (from_single_file with GGUFQuantizationConfig, qco/groups/quant.py). A file cut short or altered
is written again."""

import concurrent.futures
import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

from qco.files import FILES_MARKER, VERIFIED, damage, fingerprint, folder_lock, manifest, write_folder_atomic

log = logging.getLogger(__name__)


def quant_type(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


def writable(name: str) -> bool:
    """Whether the installed gguf package quantizes to this type (its Python quantizers cover some types only:
    gguf 0.19 writes Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 and BF16, and reads the K-quants without writing them)."""
    import numpy as np
    from gguf import quants

    qtype = quant_type(name)
    try:
        quants.quantize(np.zeros((1, 256), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def gguf_file(folder: Path, source: Path, component: str, type_name: str, key: dict) -> Tuple[Path, bool]:
    """The denoiser's GGUF file in the store (written now where it is missing or damaged), and whether it was
    written by this run."""
    path = folder / f"{component}.gguf"
    with folder_lock(folder):
        if folder.is_dir():
            problem = damage(folder)
            if problem is None:
                log.info("Loading the GGUF %s kept in %s", type_name, path)
                return path, False
            log.warning("The GGUF file in %s is damaged (%s): writing it again", folder, problem)
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

        def fill(staging: Path) -> None:
            counts = write_gguf(staging / path.name, source / component, type_name)
            files = manifest(staging)
            (staging / FILES_MARKER).write_text(json.dumps({"key": key, "tensors": counts, "files": files},
                                                           indent=1, default=str))
            (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name) for name in files}))

        write_folder_atomic(folder, fill, finished=lambda kept: (kept / FILES_MARKER).is_file())
    return path, True


def write_gguf(path: Path, weights: Path, type_name: str, workers: Optional[int] = None) -> dict:
    """One GGUF file of the safetensors weights in `weights`, tensor by tensor: a matrix whose rows split into the
    type's blocks is quantized to it, every other tensor (biases, norms, the odd-sized) kept in F32, as published
    GGUF conversions of Flux do. The gguf package quantizes with numpy, about 0.12 GB of float32 a second for
    Q8_0 on one core of this project's CPU machine (some 7 minutes for a 12B denoiser); numpy lets go of
    Python's lock inside its array operations, so a pool of threads quantizes several tensors at once, each
    reading its own from the file, and the writer takes them in the files' order. Returns how many tensors of
    each type it holds."""
    import gguf
    from safetensors import safe_open

    files = sorted(weights.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{weights}: no safetensors weights to write as GGUF")
    jobs = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            jobs += [(str(file), name, type_name) for name in handle.keys()]
    writer = gguf.GGUFWriter(str(path), arch="qco")
    counts = {}
    workers = workers or min(len(jobs), os.cpu_count() or 1, 16)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, data, quantized in pool.map(_quantize_one, jobs):
            if quantized:
                writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=quant_type(type_name))
            else:
                writer.add_tensor(name, data)
            kind = type_name if quantized else "F32"
            counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("Wrote %s (%s) in %d threads", path, ", ".join(f"{n} {t}" for t, n in counts.items()), workers)
    return counts


def _quantize_one(job):
    """(file, tensor name, type) -> (name, array, whether quantized): one tensor, read and quantized."""
    import gguf
    from safetensors import safe_open

    file, name, type_name = job
    qtype = quant_type(type_name)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    with safe_open(file, framework="pt") as handle:
        tensor = handle.get_tensor(name).float().numpy()
    if tensor.ndim == 2 and tensor.shape[-1] % block == 0:
        return name, gguf.quants.quantize(tensor, qtype), True
    return name, tensor, False


def tensor_types(path: Path) -> dict:
    """How many tensors of each type a GGUF file holds (what a downloaded file is, as the record says)."""
    from gguf import GGUFReader

    counts = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts
