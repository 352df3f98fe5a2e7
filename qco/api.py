"""qco from Python, for notebooks and scripts: one run from overrides, as the command line makes it, and the
rows of a sweep. Nothing heavy is imported until a function is called."""

from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence, Union

CONFIG_MODULE, CONFIG_NAME = "qco.conf", "config"


def _task(cfg) -> None:  # the command line's task is qco.__main__.app; the safety check only composes
    return None


def run(overrides: Sequence[str] = (), run_dir: Optional[Union[str, Path]] = None):
    """Run one combination: `qco.run(["quant=nf4", "offload=model"])` does what `python -m qco quant=nf4
    offload=model` does (the same config, checks, rules and record) and returns the record (a qco.record.Record:
    record.timings.latency_s.mean, record.memory.peak_allocated_gib, ...) that it also writes to
    run_dir/results.json (default: outputs/runs/<date>/<time>, as the command line's).
    A mistake raises qco.errors.QcoError, whose lines are what the command line prints."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from qco.errors import QcoError
    from qco.registry import register_configs
    from qco.runner import run as run_one
    from qco.safety import check_command_line
    from qco.user_errors import one_line

    overrides = [str(o) for o in overrides]
    register_configs()
    try:
        problems = check_command_line(overrides, _task, f"pkg://{CONFIG_MODULE}", CONFIG_NAME)
        if problems:
            raise QcoError(problems)
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(CONFIG_NAME, overrides=overrides)
    except QcoError:
        raise
    except Exception as error:  # Hydra's own errors, as the command line words them
        lines = one_line(error, overrides)
        if lines is None:
            raise
        raise QcoError(lines) from error
    finally:
        GlobalHydra.instance().clear()
    folder = Path(run_dir) if run_dir is not None else \
        Path("outputs/runs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return run_one(cfg, folder, overrides)


def load_sweep(folder: Union[str, Path]):
    """The rows of a sweep (or of any folder of run folders), one per job, with the columns of its sweep.csv and
    each job's overrides and folder: a pandas DataFrame where pandas is installed, else a list of dicts."""
    from qco.sweep.aggregate import load_rows

    rows = [{**row.tidy(), "overrides": row.overrides, "dir": str(row.dir)} for row in load_rows(Path(folder))]
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)
