"""Compose a command line's configs the way Hydra will, with Hydra's own loader and parser, without
building anything: the run's config, or a sweep's config and each of its jobs' configs."""

import itertools
import math
import os
from typing import Callable, Iterator, List, Optional, Tuple

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    detect_task_name,
)
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobRuntime, setup_globals
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from qco.errors import QcoError
from qco.safety.yaml_limits import UnsafeConfigFile, escapes_its_folder

# Composing one job's config takes about 50 ms; a sweep whose options alone make more combinations
# than this is refused rather than checked for minutes.
MAX_COMBINATIONS = 4096


class CheckedLoader(ConfigLoaderImpl):
    """Hydra's loader, with its search path checked before Hydra opens it: a `pkg://` entry imports that Python
    package while the config is composed (a module planted in the working folder would run), so an entry is a
    folder (file://DIR or a plain path) or qco's own package."""

    def _process_config_searchpath(self, config_name, parsed_overrides, repo) -> None:
        entries = next((o.value() for o in parsed_overrides if o.get_key_element() == "hydra.searchpath"), None)
        if entries is None and config_name is not None:
            loaded = repo.load_config(config_path=config_name)
            entries = OmegaConf.select(loaded.config, "hydra.searchpath") if loaded is not None else None
        for entry in (entries if isinstance(entries, (list, ListConfig)) else []):
            if isinstance(entry, str) and not _folder_entry(entry):
                raise QcoError(f"hydra.searchpath=[{entry}]: a search path entry names a folder of configs "
                               "(file://DIR or DIR); any other provider is refused, pkg:// of anything but qco "
                               "imports that package while composing; fix: give the folder, e.g. "
                               "hydra.searchpath=[file:///path/to/conf], or use --config-dir DIR")
        super()._process_config_searchpath(config_name, parsed_overrides, repo)


def _folder_entry(entry: str) -> bool:
    if entry.startswith("pkg://"):
        return entry[len("pkg://"):].split(".")[0].split("/")[0] == "qco"
    return entry.startswith("file://") or "://" not in entry


def config_loader(args, task_function: Callable, config_path: str) -> ConfigLoaderImpl:
    """The loader Hydra's main makes for this command line (hydra/_internal/utils.py: _run_hydra)."""
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(task_function)
    search_path = create_automatic_config_search_path(calling_file, calling_module, args.config_path or config_path)
    if args.config_dir is not None:
        folder = os.path.abspath(args.config_dir)
        if not os.path.isdir(folder):
            raise QcoError(f"--config-dir {args.config_dir}: no such folder ({folder}); fix: give a folder of YAML "
                           "config groups, e.g. --config-dir my_conf")
        search_path.prepend(provider="command-line", path=f"file://{folder}",
                            anchor=SearchPathQuery(provider="schema"))
    setup_globals()  # the now: and hydra: resolvers
    JobRuntime().set("name", detect_task_name(calling_file, calling_module))
    return CheckedLoader(config_search_path=search_path)


def compose_command(loader: ConfigLoaderImpl, config_name: str, overrides: List[str],
                    multirun_flag: bool, show_only: bool = False) -> Tuple[Optional[DictConfig], List[DictConfig]]:
    """The sweep's own config (None for a run), and the configs its runs will have: one for a run, one
    per distinct combination of options for a sweep (values that select no option take their first)."""
    refuse_options_outside(loader, config_name, overrides)
    refuse_tables_as_sweep_params(overrides)
    # Hydra reads hydra.mode from a config composed for a sweep, without checking sweep overrides
    try:
        probe = loader.load_configuration(config_name, overrides, RunMode.MULTIRUN, from_shell=True,
                                          validate_sweep_overrides=False)
    except (AssertionError, AttributeError) as error:  # OmegaConf's, where an override sets a key under a null table
        params = [o for o in overrides if o.lstrip("+~").startswith("hydra.sweeper.params")]
        if not params:
            raise
        raise QcoError(f"{params[0]}: hydra.sweeper.params is null here, and Hydra cannot set a key of a null table "
                       "from the command line; fix: sweep on the command line (python -m qco -m quant=none,nf4), or put "
                       "the parameters in an experiment file, as conf/experiment/fit_card.yaml does") from error
    multirun = multirun_flag or (probe.hydra.mode == RunMode.MULTIRUN and not show_only)
    if not multirun:
        return None, [loader.load_configuration(config_name, overrides, RunMode.RUN, from_shell=True)]
    master = loader.load_configuration(config_name, overrides, RunMode.MULTIRUN, from_shell=True)
    return master, [loader.load_sweep_config(master, job) for job in job_overrides(loader, master, config_name)]


def refuse_options_outside(loader: ConfigLoaderImpl, config_name: str, overrides: List[str]) -> None:
    """A group option names a file of the group's folder: `experiment=../../x` or `experiment=/x` would
    name one elsewhere (the config sources refuse the same for defaults entries inside files)."""
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            continue
        try:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() \
                else [override.get_value_element_as_str()]
        except Exception:  # noqa: BLE001 - a glob needs the loader: it picks among the group's own options
            continue
        outside = [v for v in values if escapes_its_folder(v)]
        if outside and loader.get_group_options(override.key_or_group, config_name=config_name, overrides=overrides):
            raise UnsafeConfigFile(f"{override.key_or_group}={outside[0]}: an option must be a file of the "
                                   f"{override.key_or_group}/ folder, and this one leaves it; fix: name the option "
                                   "without '..' or a leading '/', and add its folder with --config-dir")


PARAMS_FIX = ("a sweep parameter is written as on the command line: hydra.sweeper.params.quant='none,nf4' (or "
              "choice(none, nf4) for a search); fix: write its values that way")


def refuse_tables_as_sweep_params(overrides: List[str]) -> None:
    """hydra.sweeper.params holds strings (Hydra's schema); a table there ends Hydra's composing in a traceback."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not key.startswith("hydra.sweeper.params") or override.is_sweep_override():
            continue
        value = override.value()
        values = value.values() if key == "hydra.sweeper.params" and isinstance(value, dict) else [value]
        if any(isinstance(v, (dict, list)) for v in values):
            raise QcoError(f"{override.input_line}: a table where {key} takes text; {PARAMS_FIX}")


def parsed_overrides(loader: ConfigLoaderImpl, master: DictConfig) -> list:
    """The sweep's overrides as its sweeper will read them: hydra.sweeper.params, then the command's."""
    table = OmegaConf.select(master, "hydra.sweeper.params") or {}
    for key, value in table.items():
        if not isinstance(value, (str, int, float, bool)):
            raise QcoError(f"hydra.sweeper.params.{key}: a {type(value).__name__}; {PARAMS_FIX}")
    params = [f"{key}={value}" for key, value in table.items()]
    arguments = list(OmegaConf.to_container(master.hydra.overrides.task))
    return OverridesParser.create(config_loader=loader).parse_overrides(params + arguments)


def job_overrides(loader: ConfigLoaderImpl, master: DictConfig, config_name: str) -> Iterator[List[str]]:
    """Every combination of the options the sweep selects: choice, range, glob and lists expand as
    Hydra's basic sweeper expands them; an interval or a swept value (no option) takes no part."""
    arguments = list(OmegaConf.to_container(master.hydra.overrides.task))
    options = {}
    for override in parsed_overrides(loader, master):
        key = override.get_key_element()
        if not override.is_sweep_override():
            options[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            selects = bool(loader.get_group_options(override.key_or_group, config_name=config_name,
                                                    overrides=arguments))
            options[key] = values if selects else values[:1]
        else:
            options.pop(key, None)  # an interval: numbers, checked by the sweeper
    count = math.prod(len(values) for values in options.values())
    if count > MAX_COMBINATIONS:
        raise QcoError(f"the sweep selects {count} combinations of options, more than the {MAX_COMBINATIONS} qco "
                       "checks before starting; fix: split it into smaller sweeps")
    for combination in itertools.product(*options.values()):
        yield list(combination)

