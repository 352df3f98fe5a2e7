"""A parallel run of the tiny model for tests/test_parallel.py to stop with a signal: python -m tests.parallel_stop
MODELS RUN_DIR. Two ranks over gloo, each running the whole image (the split needs GPUs), with calls enough to be
stopped in; what run_parallel raised is written to RUN_DIR.raised.json."""

import json
import sys
from pathlib import Path


def main(models: str, run_dir: Path) -> None:
    from hydra import compose, initialize_config_module

    from qco.registry import register_configs
    from qco.stores.models import resolve_source
    from qco.ranks import run_parallel
    from qco.runner import run
    from qco.config import typed

    register_configs()
    with initialize_config_module("qco.conf", version_base="1.3"):
        cfg = typed(compose("config", overrides=[f"paths.models={models}", "run.device=cpu", "run.repeats=100",
                                                 "run.quality=false"]))
    resolve_source(cfg.model, cfg.paths.models)  # built once before the ranks start, as qco's own process does
    run_dir.mkdir(parents=True)
    raised = {"type": None}
    try:
        run_parallel(cfg, run_dir, [], world_size=2, run=run)
    except BaseException as error:
        raised = {"type": type(error).__name__, "exit_code": getattr(error, "exit_code", None),
                  "status": getattr(error, "status", None), "message": str(error)}
        raise
    finally:
        Path(f"{run_dir}.raised.json").write_text(json.dumps(raised))


if __name__ == "__main__":  # the ranks are spawned: they import this module, and must not run it
    main(sys.argv[1], Path(sys.argv[2]))
