"""Check one config as Hydra composed it, hydra node included, before anything in it is built:
every `_target_`, every logging factory and class, where log files and job folders go, and the
few other keys through which a config could run code or write where it likes."""

import copy
import os
import re
import stat
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from qco.errors import QcoError
from qco.safety.allowed import (LOG_FACTORIES, LOG_FILE_MODES, LOG_FORMATTER_CLASSES, LOG_FORMATTER_KEYS,
                                LOG_HANDLER_CLASSES, LOG_HANDLER_KEYS, LOG_LOGGER_KEYS, LOG_SECTION_KEYS, LOG_STREAMS,
                                TARGETS, permitted)

# hydra.job.env_set is applied to os.environ while the job runs, and a sweep job's process
# inherits it: LD_PRELOAD, PYTHONPATH or PYTHONSTARTUP would run code. These are the ones a run
# may need set.
# None of them moves a cache, a library's search path or a compiler: TORCHINDUCTOR_CACHE_DIR is not among them
# (a prepared folder would feed inductor cache entries, which torch loads), nor HF_HOME, CC, CXX or the QCO_* stores.
ENV_SET_ALLOWED = ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                   "HF_HUB_OFFLINE")
FIX = "fix: remove it, or use a packaged option"
BUILDER_KEYS = ("_target_", "()", "class")  # keys whose value names something to import and call
MAX_DEPTH = 64


class _Unresolvable:
    def __init__(self, error: Exception):
        self.error = error


def _children(node) -> Iterator[Tuple[str, object]]:
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        raw = node._get_node(key)
        if key in BUILDER_KEYS and raw is not None and raw._is_interpolation():
            # what it names could differ between this check and Hydra's use of it (${now:...})
            yield str(key), _Unresolvable(ValueError(f"{raw._value()}: an interpolation; write the name out"))
            continue
        try:
            yield str(key), node[key]  # resolved: a resolver may build a dict that holds a _target_
        except MissingMandatoryValue:
            yield str(key), None
        except Exception as error:  # noqa: BLE001 - an interpolation that fails is judged by its key
            yield str(key), _Unresolvable(error)


def walk(node, path: Tuple[str, ...] = (), depth: int = 0) -> Iterator[Tuple[Tuple[str, ...], object]]:
    """(key path, resolved value) of every leaf."""
    if depth > MAX_DEPTH:  # deeper than any config, or an interpolation that points at its own parent
        raise QcoError(f"{'.'.join(path[:6])}...: nested more than {MAX_DEPTH} levels deep, which no config needs and "
                       "which could hide what it builds; fix: flatten it, or remove it")
    for key, child in _children(node):
        if isinstance(child, (DictConfig, ListConfig)):
            yield from walk(child, path + (key,), depth + 1)
        else:
            yield path + (key,), child


def _target_problems(cfg) -> List[str]:
    problems = []
    for path, value in walk(cfg):
        if path[-1] != "_target_" or path[:2] in (("hydra", "job_logging"), ("hydra", "hydra_logging")):
            continue
        why = "unresolvable" if isinstance(value, _Unresolvable) else permitted(value, TARGETS)
        if why:
            problems.append(refusal(".".join(path), value, why, TARGETS))
    return problems


def refusal(key: str, value, why: str, allowed) -> str:
    if isinstance(value, _Unresolvable):
        why = f"cannot be checked ({value.error})"
    else:
        key = f"{key}={value}"
    if allowed is TARGETS:  # too many to print: say what they are
        names = ("qco's sweep callback, the launchers and sweepers of Hydra and its plugins and Optuna's samplers "
                 "(listed in qco/safety/allowed.py)")
    else:
        names = ", ".join(allowed)
    return f"{key}: {why}; a config may name only {names}; {FIX}"


def _inside(path: str, folder: str, or_at: bool = False) -> bool:
    """Whether `path` lies inside `folder` (or is it, with or_at), links followed."""
    path, folder = (os.path.realpath(os.path.abspath(p)) for p in (path, folder))
    return path.startswith(folder + os.sep) or (or_at and path == folder)


def _logging_builder(path: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
    """What a logging key may name, where the key names something dictConfig builds; else None."""
    if path[-1] == "()":
        return LOG_FACTORIES
    if len(path) == 3 and path[2] == "class":
        return {"handlers": LOG_HANDLER_CLASSES, "formatters": LOG_FORMATTER_CLASSES}.get(path[0])
    return None


def _logging_shape_problems(name: str, section) -> List[str]:
    """Every key of a logging section must be one dictConfig is given by a logging config qco permits
    (qco/safety/allowed.py): the section's, a formatter's, a handler's, a logger's."""
    problems = []

    def refuse(key: str, allowed) -> None:
        problems.append(f"{key}: not a logging setting a config may make (logging acts on any key, and this one could "
                        f"write or run what it names); allowed here: {', '.join(allowed)}; {FIX}, such as "
                        "hydra/job_logging=default, disabled or stdout")

    def table(value) -> dict:
        return value if isinstance(value, dict) else {}

    for key, value in section.items():
        if key not in LOG_SECTION_KEYS:
            refuse(f"{name}.{key}", LOG_SECTION_KEYS)
    for kind, keys in (("formatters", LOG_FORMATTER_KEYS), ("handlers", LOG_HANDLER_KEYS),
                       ("loggers", LOG_LOGGER_KEYS)):
        for entry, settings in table(section.get(kind)).items():
            for key in table(settings):
                if key not in keys:
                    refuse(f"{name}.{kind}.{entry}.{key}", keys)
    for key in table(section.get("root")):
        if key not in LOG_LOGGER_KEYS:
            refuse(f"{name}.root.{key}", LOG_LOGGER_KEYS)
    for entry, settings in table(section.get("handlers")).items():
        mode = table(settings).get("mode")
        if mode is not None and mode not in LOG_FILE_MODES:
            problems.append(f"{name}.handlers.{entry}.mode={mode}: a log file is appended to or written anew "
                            f"({', '.join(LOG_FILE_MODES)}); {FIX}")
    return problems


# Hydra's own logging options (hydra/job_logging=default, disabled, none, stdout; hydra/hydra_logging=...)
HYDRA_LOGGING = Path(hydra.__file__).parent / "conf" / "hydra"
# what an override may change in a packaged option: how much is logged, and where the run's log file goes
LOG_SETTABLE = ("level", "filename")


def _without_settable(node):
    if isinstance(node, dict):
        return {key: _without_settable(value) for key, value in node.items() if key not in LOG_SETTABLE}
    return node


def _packaged_logging_problems(name: str, section, choice: Optional[str]) -> List[str]:
    """Logging is set by Hydra's packaged options, with its levels and the log file's name as the settings an
    override changes; a logging config of a user's own (a handler dictionary) is refused."""
    kind = name.split(".")[1]
    packaged = HYDRA_LOGGING / kind / f"{choice}.yaml"
    fix = (f"fix: choose hydra/{kind}=default, disabled, none or stdout, and set levels by override "
           f"(e.g. {name}.root.level=DEBUG)")
    if choice is None or not packaged.is_file():
        return [f"hydra/{kind}={choice}: logging is set by Hydra's packaged options, not a config's own handlers; {fix}"]
    try:
        composed = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    except Exception:  # noqa: BLE001 - an interpolation that fails: the walk in _logging_problems names it
        return []
    expected = OmegaConf.to_container(OmegaConf.load(packaged), resolve=False)
    if _without_settable(composed or {}) != _without_settable(expected or {}):
        changed = sorted(set(_flat(_without_settable(composed or {}))) ^ set(_flat(_without_settable(expected or {}))))
        where = f"{name}.{changed[0][0]}" if changed else name
        return [f"{where}: differs from Hydra's packaged hydra/{kind}={choice}, and logging is set by the packaged "
                f"options with only their levels and log file name changed; {fix}"]
    return []


def _flat(node, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flat(value, f"{path}.{key}".lstrip("."))
    else:
        yield path, repr(node)


def _logging_problems(name: str, section, folder: str, base: Optional[str] = None) -> List[str]:
    """logging.config.dictConfig builds `()` factories, handler and formatter classes and `ext://`
    objects, and a FileHandler writes where its filename says."""
    if section is None:
        return []
    try:
        shape = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    except Exception:  # noqa: BLE001 - an interpolation that fails: named by the walk below
        shape = {}
    problems = _logging_shape_problems(name, shape if isinstance(shape, dict) else {})
    for path, value in walk(section):
        key = ".".join((name,) + path)
        if isinstance(value, _Unresolvable):
            problems.append(f"{key}: cannot be resolved before the run ({value.error}); {FIX}")
        elif isinstance(value, str) and value.startswith("ext://"):
            why = permitted(value[len("ext://"):], LOG_STREAMS)
            if why:
                problems.append(refusal(key, value, why, [f"ext://{s}" for s in LOG_STREAMS]))
        elif _logging_builder(path) is not None:
            why = permitted(value, _logging_builder(path))
            if why:
                problems.append(refusal(key, value, why, _logging_builder(path)))
        elif len(path) == 3 and path[0] == "handlers" and path[2] == "filename":
            # a relative name is opened from where logging is set up: the job's folder with hydra.job.chdir=true
            where = os.path.join(base, value) if isinstance(value, str) and base else value
            if not isinstance(value, str) or not _inside(where, folder):
                problems.append(f"{key}={value}: a log file must lie inside the run's folder ({folder}); "
                                "fix: write it under ${hydra.runtime.output_dir}")
    return problems


def _sweeper_and_launcher_problems(hydra, sweep_dir: Optional[str]) -> List[str]:
    problems = []
    sweeper, launcher = hydra.get("sweeper") or {}, hydra.get("launcher") or {}
    if sweeper.get("custom_search_space") is not None:  # the Optuna sweeper calls it
        problems.append(f"hydra.sweeper.custom_search_space={sweeper.get('custom_search_space')}: names a function "
                        f"to call, and a config may not run code; {FIX}")
    storage = sweeper.get("storage")
    if storage is not None and not (isinstance(storage, str) and storage.startswith("sqlite:///") and sweep_dir
                                    and _inside(storage[len("sqlite:///"):], sweep_dir)):
        problems.append(f"hydra.sweeper.storage={storage}: an Optuna study may be stored only as sqlite:/// inside the "
                        f"sweep folder ({sweep_dir}); fix: leave it null, or use "
                        "sqlite:///${hydra.sweep.dir}/study.db")
    if sweep_dir is not None:  # a sweep: its launcher is built
        problems += [f"hydra.launcher.{key}: required and not set; fix: add hydra.launcher.{key}=<value> to the command"
                     for key in sorted(OmegaConf.missing_keys(launcher))]
    for key in ("submitit_folder", "temp_folder"):  # where submitit and joblib write their files
        folder = launcher.get(key)
        # submitit fills %j, %A, %a, %t and the like with job numbers: checked as filled, `..` after one included
        expanded = re.sub(r"%+[A-Za-z]", "1", str(folder)) if folder is not None else None
        if folder is not None and sweep_dir and not _inside(os.path.join(expanded, "x"), sweep_dir):
            problems.append(f"hydra.launcher.{key}={folder}: the launcher's files must lie inside the sweep folder "
                            f"({sweep_dir}); fix: leave it as packaged (${{hydra.sweep.dir}}/...)")
    for path, value in walk(launcher, ("hydra", "launcher")) if isinstance(launcher, DictConfig) else ():
        # each value becomes a `#SBATCH --key=value` line of the job script
        if isinstance(value, str) and any(char in value for char in "\n\r\x00"):
            problems.append(f"{'.'.join(path)}: holds a line break, and submitit writes it into the job script, where "
                            "the next line would run as a command; fix: write it on one line")
    if sweep_dir is not None and str(launcher.get("_target_", "")).endswith("SlurmLauncher") and not problems:
        from qco.sweep.slurm import launcher_problems  # asks sinfo: only for a sweep the rest lets through

        problems += launcher_problems(launcher)
    if launcher.get("setup"):  # submitit writes these lines into the job script
        problems.append(f"hydra.launcher.setup={list(launcher.get('setup'))}: shell commands for the job script, and "
                        "a config may not run code; fix: set up the environment in your cluster's job profile instead")
    return problems


def _callback_and_params_problems(hydra) -> List[str]:
    """A callback is named by its `_target_` alone (qco's take no arguments, and Hydra would hand any other key to
    it); a sweeper's parameter is a value or a sweep of values, as the command line writes them."""
    problems = []
    for name, callback in (hydra.get("callbacks") or {}).items():
        extra = sorted(str(key) for key in (callback.keys() if isinstance(callback, DictConfig) else []) if key != "_target_")
        try:
            refused = isinstance(callback, DictConfig) and permitted(callback.get("_target_"), TARGETS)
        except Exception:  # noqa: BLE001 - an interpolation: refused by the _target_ check, in one line
            refused = True
        if refused:
            continue  # its _target_ is refused already, in one line
        if not isinstance(callback, DictConfig) or extra:
            what = f"the keys {', '.join(extra)}" if extra else f"a {type(callback).__name__}"
            problems.append(f"hydra.callbacks.{name}: {what}; a callback is named by its _target_ alone, and takes no "
                            f"arguments; {FIX}")
    params = hydra.get("sweeper", {}).get("params") if isinstance(hydra.get("sweeper"), DictConfig) else None
    for key, value in (params or {}).items():
        plain = not isinstance(value, DictConfig) and (not isinstance(value, ListConfig)
                                                       or all(not isinstance(v, (DictConfig, ListConfig)) for v in value))
        if not plain:
            problems.append(f"hydra.sweeper.params.{key}: a table; a sweep parameter is written as on the command line, "
                            f"e.g. hydra.sweeper.params.{key}='a,b' or choice(a, b); fix: write its values that way")
    return problems


def _empty_folder_problems(hydra, multirun: bool) -> List[str]:
    keys = ("sweep.dir",) if multirun else ("run.dir",)
    return [f"hydra.{key}={OmegaConf.select(hydra, key)!r}: empty, so results would land in the current folder; "
            f"fix: give it a folder, e.g. hydra.{key}=outputs/..." for key in keys
            if not str(OmegaConf.select(hydra, key) or "").strip()]


def _folder_problems(hydra, multirun: bool, output_dir: str) -> List[str]:
    problems = []
    if multirun and not _inside(output_dir, hydra.sweep.dir, or_at=True):  # at it: a sweep with no overrides
        problems.append(f"hydra.sweep.subdir={hydra.sweep.subdir}: a job's folder must lie inside the sweep folder "
                        f"({hydra.sweep.dir}); fix: a name without '..' or a leading '/'")
    subdir = hydra.get("output_subdir")
    if subdir is not None and not _inside(os.path.join(output_dir, str(subdir)), output_dir):
        problems.append(f"hydra.output_subdir={subdir}: must lie inside the run's folder; fix: hydra.output_subdir=.hydra")
    for name in (hydra.job.get("env_set") or {}):
        if name not in ENV_SET_ALLOWED:
            problems.append(f"hydra.job.env_set.{name}: a config may set only {', '.join(ENV_SET_ALLOWED)} for a job "
                            f"(others, such as LD_PRELOAD or PYTHONPATH, can run code); fix: remove it, or set it in "
                            "your shell")
    return problems


def links_in(folder: str, depth: int = 3) -> List[str]:
    """The symbolic links at or inside a folder qco or Hydra is about to write into (a job's .hydra/, its log, its
    lock): Hydra and the libraries open such files where they are, and a planted link would have them truncate or
    fill the file it points at."""
    found = [folder] if os.path.islink(folder) else []
    if found or not os.path.isdir(folder):
        return found
    base = folder.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(folder):
        found += [os.path.join(root, name) for name in dirs + files if os.path.islink(os.path.join(root, name))
                  or _hard_linked(os.path.join(root, name))]
        if root.count(os.sep) - base >= depth:
            dirs[:] = []
    return found


def _hard_linked(path: str) -> bool:
    """A file with another name elsewhere (a hard link): Hydra's files and qco's log are written in place."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink > 1


def link_problems(folders: List[str], root: str) -> List[str]:
    """The links that lead out of `root` (the sweep's folder, or the run's): a symbolic link inside it (submitit links
    its own job scripts) leads nowhere a write could harm; a hard link may be anywhere, so every one is refused."""
    links = sorted({os.path.abspath(link) for folder in folders for link in links_in(folder)
                    if not os.path.islink(link) or not _inside(link, root, or_at=True)})
    return [f"{link}: {'a symbolic link' if os.path.islink(link) else 'a hard link (the file has another name)'} in "
            f"the folder this run writes into{f' (to {os.readlink(link)!r})' if os.path.islink(link) else ''}; qco "
            "never writes through a link; fix: remove it (rm), or run into a new folder" for link in links[:5]]


def _as_job(cfg, multirun: bool, job_num: int):
    """A writable copy of a composed config, numbered as Hydra numbers a sweep's job (hydra.job.num, .id)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, False)
    if multirun:
        cfg.hydra.job.num = job_num
        cfg.hydra.job.id = cfg.hydra.job.id if cfg.hydra.job.get("id") not in (None, "???") else f"job_{job_num}"
    return cfg


def job_folder(cfg, multirun: bool, job_num: int = 0) -> str:
    """The folder Hydra will run this job in (a sweep's job: numbered as Hydra numbers it)."""
    return os.path.abspath(output_dir_of(_as_job(cfg, multirun, job_num), multirun))


def output_dir_of(cfg, multirun: bool) -> str:
    hydra = cfg.hydra
    return os.path.join(str(hydra.sweep.dir), str(hydra.sweep.subdir)) if multirun else str(hydra.run.dir)


def check_composed(cfg: DictConfig, multirun: bool, job_num: int = 0) -> List[str]:
    """Every problem of one composed config (a run's, or one job of a sweep). The config is copied and
    given the job's folder (hydra.runtime.output_dir) as Hydra's run_job will, so that log file names
    resolve as they will at run time."""
    from hydra.core.hydra_config import HydraConfig

    cfg = _as_job(cfg, multirun, job_num)
    empty = _empty_folder_problems(cfg.hydra, multirun)
    if empty:
        return empty
    output_dir = output_dir_of(cfg, multirun)
    cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
    log_folder = str(cfg.hydra.sweep.dir) if multirun else output_dir
    hydra_config, before = HydraConfig.instance(), HydraConfig.instance().cfg
    hydra_config.set_config(cfg)  # for ${hydra:...} in the values checked
    try:
        choices = cfg.hydra.runtime.get("choices") or {}
        logging = []
        base = output_dir if cfg.hydra.job.get("chdir") else os.getcwd()
        for name, folder in (("hydra.job_logging", output_dir), ("hydra.hydra_logging", log_folder)):
            section = OmegaConf.select(cfg, name)
            found = _logging_problems(name, section, folder, base if name == "hydra.job_logging" else os.getcwd())
            logging += found or _packaged_logging_problems(name, section, choices.get(name.replace(".", "/")))
        return (_target_problems(cfg) + logging
                + _callback_and_params_problems(cfg.hydra)
                + _sweeper_and_launcher_problems(cfg.hydra, str(cfg.hydra.sweep.dir) if multirun else None)
                + _folder_problems(cfg.hydra, multirun, output_dir))
    finally:
        hydra_config.cfg = before  # Hydra sets its own when the run starts


def override_problems(overrides) -> List[str]:
    """The values an override gives, every value of a sweep included (composing a sweep's jobs uses one
    value of each key that selects no option, so the others are checked here)."""
    problems = []
    for override in overrides:
        if override.is_sweep_override() and not override.is_discrete_sweep():
            continue  # an interval: numbers
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        base = tuple(override.key_or_group.split("."))
        for value in values:
            leaves = walk(OmegaConf.create({"v": value}).v, base) if isinstance(value, (dict, list)) \
                else [(base, value)]
            for path, leaf in leaves:
                if path[-1] == "_target_":
                    why = permitted(leaf, TARGETS)
                    if why:
                        problems.append(refusal(override.input_line.split("=")[0], leaf, why, TARGETS))
    return problems
