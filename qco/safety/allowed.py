"""What a config may have built, named one by one. A name in a config is resolved the way Hydra
resolves it (hydra._internal.utils._locate: the first part imported, then attributes, importing a
submodule where an attribute is missing) and the object it reaches is compared, so an alias of a
forbidden object (`qco.report.os.system`) cannot pass for a permitted one.

The resolution here imports nothing: a module a name needs must already be loaded, since importing a
module a config names would itself run code (a `torch.py` planted beside the command, say)."""

import sys
from types import ModuleType
from typing import Iterable, Optional, Tuple

# `_target_`: what Hydra's instantiate, its plugin loader and qco's quantization configs build
TARGETS = (
    "qco.sweep.callback.AggregateSweep",  # conf/config.yaml: hydra.callbacks.aggregate
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",  # Hydra's defaults
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",  # hydra/launcher=local_gpus
    "hydra_plugins.qco_launcher.QcoSlurmLauncher",  # hydra/launcher=slurm
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",  # the same, as submitit ships it
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",  # the same, on this host
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",  # experiment=search_*
    "optuna.samplers.TPESampler",  # the Optuna sweeper's samplers (hydra/sweeper/sampler=...)
    "optuna.samplers.NSGAIISampler",
    "optuna.samplers.MOTPESampler",
    "optuna.samplers.RandomSampler",
    "optuna.samplers.CmaEsSampler",
    "optuna.samplers.GridSampler",
    "optuna.samplers.QMCSampler",
)
# logging.config.dictConfig (hydra.job_logging, hydra.hydra_logging) builds these
LOG_HANDLER_CLASSES = ("logging.StreamHandler", "logging.FileHandler", "logging.NullHandler")
LOG_FORMATTER_CLASSES = ("logging.Formatter",)
LOG_FACTORIES = ("colorlog.ColoredFormatter",)  # `()`: hydra_colorlog's formatter
LOG_STREAMS = ("sys.stdout", "sys.stderr")  # `ext://` values


class Unresolved(Exception):
    """The name does not reach an object without importing something not yet loaded."""


def resolve_loaded(name: str):
    """The object `name` reaches, through modules already loaded only; Unresolved otherwise."""
    parts = name.split(".")
    if not name or not all(parts):
        raise Unresolved(f"{name!r} is not a dotted name")
    obj = sys.modules.get(parts[0])
    if obj is None:
        raise Unresolved(f"module {parts[0]} is not loaded")
    for index, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            module = sys.modules.get(".".join(parts[:index + 1])) if isinstance(obj, ModuleType) else None
            if module is None:
                raise Unresolved(f"{'.'.join(parts[:index])} has no {part}") from None
            obj = module
    return obj


def _loaded(names: Iterable[str]) -> list:
    """The permitted objects that exist in this process (an object exists once its module ran)."""
    objects = []
    for name in names:
        try:
            objects.append(resolve_loaded(name))
        except Unresolved:
            continue
    return objects


def permitted(value, names: Tuple[str, ...]) -> Optional[str]:
    """None where `value` names one of `names` (or an alias of one); else why not."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a dotted name"
    if value in names:
        return None  # the permitted name itself resolves to the permitted object, by definition
    try:
        obj = resolve_loaded(value)
    except Unresolved:
        return "not one of the permitted names"
    if any(obj is allowed for allowed in _loaded(names)):
        return None
    return "not one of the permitted names"

# What a logging section (hydra.job_logging, hydra.hydra_logging) may hold, key by key: logging.config.dictConfig
# acts on any key it is given (a handler's "." key sets attributes after the handler is built: baseFilename, mode),
# so every other key is refused. Filters are left out: they are built by factories.
LOG_SECTION_KEYS = ("version", "formatters", "handlers", "root", "loggers", "disable_existing_loggers", "incremental")
LOG_FORMATTER_KEYS = ("format", "datefmt", "style", "validate", "()", "class", "log_colors", "reset")
LOG_HANDLER_KEYS = ("class", "formatter", "level", "stream", "filename", "mode", "encoding", "delay")
LOG_LOGGER_KEYS = ("level", "handlers", "propagate")
LOG_FILE_MODES = ("a", "w")
