"""python -m qco [group=option ...]: compose the config with Hydra, then run it (qco/run.py)."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from qco.config import register_configs
from qco.errors import EXIT_USER_ERROR, QcoError
from qco.user_errors import one_line


@hydra.main(version_base="1.3", config_path="pkg://qco.conf", config_name="config")
def app(cfg) -> None:
    from qco.run import run  # imports torch and diffusers: only once the config composed

    hydra_cfg = HydraConfig.get()
    run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


def main() -> None:
    register_configs()
    # Hydra prints its own multi-line report for a bad override unless HYDRA_FULL_ERROR is set; we
    # set it so the exception reaches us and becomes one line. A user who set it gets the traceback.
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as error:
        lines = None if wants_traceback else one_line(error)
        if lines is None:
            raise
        for line in lines:
            print(f"qco: error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
