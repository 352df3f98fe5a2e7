"""qco: quantize, compile, offload. Declarative experiments for diffusers inference.

    import qco
    record = qco.run(["quant=nf4", "offload=model"])   # as `python -m qco quant=nf4 offload=model`
    rows = qco.load_sweep("outputs/sweeps/<name>")     # a sweep's rows (a DataFrame where pandas is installed)

Importing qco loads nothing heavy: torch and diffusers load when a run starts."""

from qco.api import load_sweep, run

__all__ = ["run", "load_sweep"]
