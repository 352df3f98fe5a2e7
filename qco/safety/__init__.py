"""A config cannot run code. Config files are shared like code, so before Hydra builds anything,
qco composes the command's configs exactly as Hydra will (search path, defaults lists, overrides,
the hydra node, every job of a sweep) and checks what they would have built (qco/safety/check.py)
against a list of permitted objects (qco/safety/allowed.py). Files are read only when selected,
and each is checked for size, encoding and alias bombs first (qco/safety/yaml_limits.py)."""

import os
from typing import Callable, List

from omegaconf import OmegaConf

from qco.safety.check import check_composed, job_folder, link_problems, override_problems
from qco.safety.compose import compose_command, config_loader, parsed_overrides
from qco.safety.yaml_limits import checked_config_files
from qco.validate import check_sweep


def check_command_line(argv: List[str], task_function: Callable, config_path: str, config_name: str) -> List[str]:
    """Every problem of the command line, one line each; [] when Hydra may go ahead. Errors of
    composition itself (an unknown option, a bad override) are raised as Hydra raises them."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.shell_completion:
        return []
    if args.experimental_rerun is not None:  # Hydra unpickles the file it names: a pickle runs anything
        return [f"--experimental-rerun {args.experimental_rerun}: Hydra would unpickle that file, and unpickling runs "
                "whatever it holds; fix: run a folder's rerun.yaml instead: python -m qco --config-dir RUN_DIR "
                "--config-name rerun"]
    with checked_config_files():
        return _problems(args, task_function, config_path, config_name)


def _problems(args, task_function: Callable, config_path: str, config_name: str) -> List[str]:
    loader = config_loader(args, task_function, config_path)
    show_only = bool(args.cfg or args.info or args.help)
    sweep, jobs = compose_command(loader, args.config_name or config_name, list(args.overrides),
                                  bool(args.multirun), show_only=show_only)
    problems = override_problems(parsed_overrides(loader, sweep)) if sweep is not None else []
    for index, cfg in enumerate(jobs):
        problems += [p for p in check_composed(cfg, sweep is not None, index) if p not in problems]
    if problems or show_only:
        return problems
    folders = [job_folder(cfg, sweep is not None, index) for index, cfg in enumerate(jobs)]
    shared = sorted({folder for folder in folders if folders.count(folder) > 1})
    if shared:  # Hydra would run them all in one folder: each would find the other's record and skip
        return [f"hydra.sweep.subdir={sweep.hydra.sweep.subdir}: gives {folders.count(shared[0])} jobs one folder "
                f"({shared[0]}), so each would find the other's record as its own; fix: leave it as packaged "
                "(${hydra.job.override_dirname}), or name each job apart (e.g. ${hydra.job.num})"]
    root = os.path.abspath(str(sweep.hydra.sweep.dir)) if sweep is not None else folders[0]
    problems += link_problems(([root] if sweep is not None else []) + folders, root)
    if sweep is not None and jobs and not problems:  # what every job shares, before any job starts
        problems += check_sweep(OmegaConf.masked_copy(jobs[0], [k for k in jobs[0] if k != "hydra"]))
    return problems
