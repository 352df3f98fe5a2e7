"""python -m qco [group=option ...]: compose the config with Hydra, then run it (qco/runner.py)."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from qco.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, QcoError
from qco.registry import register_configs
from qco.safety import check_command_line
from qco.user_errors import one_line

# Set when the user asked for tracebacks; read once, before main() sets the variable itself.
WANTS_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with(lines, code: int = EXIT_USER_ERROR) -> None:
    for line in lines:
        print(f"qco: error: {line}", file=sys.stderr)
    sys.exit(code)


CONFIG_PATH, CONFIG_NAME = "pkg://qco.conf", "config"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def app(cfg):
    hydra_cfg = HydraConfig.get()
    from qco.report import rerun_overrides

    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = rerun_overrides(hydra_cfg, list(hydra_cfg.overrides.task))
    if hydra_cfg.mode == RunMode.MULTIRUN:
        from qco.sweep.job import sweep_job

        return sweep_job(cfg, run_dir, overrides)  # never raises for a bad row: the sweep goes on

    from qco.runner import run  # imports torch and diffusers: only once the config composed

    try:
        run(cfg, run_dir, overrides)
    except QcoError as error:
        if WANTS_TRACEBACK:
            raise
        # exit here, inside the job: an exception would make Hydra print its own report first
        exit_with(error.lines, error.exit_code)


def exit_if_nothing_ran() -> None:
    """A sweep none of whose jobs could run is a failed command, though each row was recorded."""
    from qco.sweep.callback import LAST_SWEEP

    statuses = LAST_SWEEP.get("statuses")
    if not statuses or any(status in ("ok", "planned") for status in statuses):
        return
    table = LAST_SWEEP["folder"] / "sweep.md"
    if all(status == "refused" for status in statuses):
        exit_with([f"every job of the sweep was refused ({len(statuses)}); the reasons: {table}; fix: change the "
                   "combinations the rules refuse, as each reason says"])
    exit_with([f"no job of the sweep finished ({', '.join(sorted(set(statuses)))}); the reasons: {table}"], 1)


def main() -> None:
    register_configs()
    # Hydra prints a multi-line report for a bad override unless HYDRA_FULL_ERROR is set; setting
    # it lets the exception reach us and become one line. A user who set it gets the traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        problems = check_command_line(sys.argv[1:], app.__wrapped__, CONFIG_PATH, CONFIG_NAME)
        if problems:  # composed as Hydra will, and refused before Hydra builds anything
            exit_with(problems)
        app()
        exit_if_nothing_ran()
    except KeyboardInterrupt:
        if WANTS_TRACEBACK:
            raise
        exit_with(["interrupted; every results file written so far is whole, and running the same command "
                   "again completes a sweep"], EXIT_INTERRUPTED)
    except RecursionError:
        if WANTS_TRACEBACK:
            raise
        exit_with(["the command line or a config file it selects is nested thousands of levels deep, past what "
                   "Hydra's parser reads; fix: flatten it (no config needs more than a few levels)"])
    except Exception as error:
        lines = None if WANTS_TRACEBACK else one_line(error, sys.argv[1:])
        if lines is None:
            raise
        exit_with(lines, getattr(error, "exit_code", EXIT_USER_ERROR))


if __name__ == "__main__":
    main()
