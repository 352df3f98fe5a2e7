"""Turn the exceptions a user's command line can cause while Hydra composes into one line each:
the key, the value, what is allowed, the fix. Anything else is a bug and keeps its traceback."""

import difflib
import errno
from typing import List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

from qco.errors import WRITE_ERRORS, QcoError

SHOW_KEYS = "`python -m qco --cfg job` prints every key"


def one_line(error: BaseException, args: List[str]) -> Optional[List[str]]:
    cause = error
    while cause is not None:  # Hydra wraps what a config source raised (qco/safety/yaml_limits.py)
        if isinstance(cause, QcoError):
            return cause.lines
        cause = cause.__cause__ or cause.__context__
    if type(error).__name__ == "FailedJobError":  # submitit: sbatch refused the job script
        return [f"hydra/launcher=slurm: SLURM refused the job ({_joined(error)[:300]}); fix: check "
                "hydra.launcher.partition and the other hydra.launcher.* values against your cluster (sinfo)"]
    if isinstance(error, ValueError) and str(error).startswith("Only one of --run"):
        return [f"{_first_line(error)}; fix: drop all but one of them (--cfg shows a run's config; a sweep's jobs "
                "are printed by running it with run.dry_run=true)"]
    if isinstance(error, ValueError) and "Config group override must be" in str(error):
        nulls = [a for a in args if a.split("=", 1)[-1] in ("null", "~", "")] or ["a group=null"]
        group = nulls[0].split("=")[0]
        return [f"{nulls[0]}: a config group needs an option, and null is none; fix: choose one, e.g. {group}=none "
                f"(`python -m qco --help` lists them), or leave {group} out for its default"]
    if isinstance(error, MissingConfigException) and "Primary config directory not found" in str(error):
        return [f"--config-path: {_joined(error)}; fix: give an existing folder (a relative one is taken "
                "relative to the qco package; prefer --config-dir DIR for your own configs)"]
    if isinstance(error, OSError) and error.filename and error.errno in WRITE_ERRORS:
        full = error.errno == errno.ENOSPC
        return [f"{error.filename}: cannot write there ({'the disk is full' if full else error.strerror}); "
                f"fix: {'free space, or ' if full else ''}write elsewhere with hydra.run.dir=... "
                "(hydra.sweep.dir=... for a sweep); results already written are untouched"]
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if error.options:
            allowed = sorted(error.options)
            nearest = (difflib.get_close_matches(option, allowed, n=1) or allowed)[0]  # nf5: nf4, not fp4
            return [f"{group}={option}: no such option; allowed: {', '.join(allowed)}; "
                    f"fix: e.g. {group}={nearest}, or add {group}/{option}.yaml through --config-dir"]
        return [f"{error.missing_cfg_file}: no such config; fix: check the name and --config-dir"]
    if isinstance(error, OverrideParseException):
        return [f"{_unparsable(args) or 'an override'}: cannot parse it ({_first_line(error)}); "
                "fix: write group=option or key=value, quoting values that hold spaces or '='"]
    renamed = _renamed(args)
    if renamed and isinstance(error, (ConfigCompositionException, OmegaConfBaseException)):
        return renamed
    choice = _closed_choice(error, args)
    if choice:
        return choice
    if isinstance(error, (ConfigCompositionException, OmegaConfBaseException)):
        cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
        key = getattr(cause, "full_key", None) or ""
        message = _first_line(cause) if cause is not error else _joined(error)
        if cause is not error and _first_line(error) not in message:
            message = f"{_first_line(error)}: {message}"
        prefix = f"{key}: " if key and key not in message else ""
        if not key:
            prefix = ", ".join(a for a in args if "=" in a and a.split("=")[0].lstrip("+~") in message) + ": "
        unknown_key = isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or not key
        fix = "check the key's name (" if unknown_key else f"give {key} a value of its type ("
        closed = _outside_a_closed_table(message, key) if unknown_key else None
        if closed:
            return [closed]
        near = _nearest_key(args, message) if unknown_key else None
        if near:
            fix = f"check the key's name, e.g. {near} ("
        return [f"{prefix.lstrip(': ')}{message}; fix: {fix}{SHOW_KEYS})"]


def _nearest_key(args: List[str], message: str) -> Optional[str]:
    """The override with the schema's key nearest to the one the command line misspelt (run.stpes=5:
    run.steps=5; of a table, its name alone: compile.inductr=1: compile.inductor), if any is near."""
    import dataclasses
    import typing

    for arg in args:
        path = arg.partition("=")[0].lstrip("+~")
        *parents, name = path.split(".")
        if f"'{name}'" not in message:
            continue
        node = _schema_node(parents)
        if not dataclasses.is_dataclass(node):
            return None
        kinds = typing.get_type_hints(node)
        found = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(node)], n=1)
        if not found:
            return None
        key, kind = ".".join([*parents, found[0]]), kinds[found[0]]
        table = dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict  # takes keys, not this value
        return key if table else f"{key}={arg.partition('=')[2]}"
    return None


def _schema_node(parents: List[str]):
    """The type the schema (qco/config.py, qco/groups/) gives the key at the path `parents` (a dataclass, Dict[...], ...), or None
    where the path leaves the schema."""
    import dataclasses
    import typing

    from qco.config import Config

    node = Config
    for name in parents:
        node = typing.get_type_hints(node).get(name) if dataclasses.is_dataclass(node) else None
    return node


def _outside_a_closed_table(message: str, full_key: str) -> Optional[str]:
    """A key one of the closed tables does not name (compile.inductor.cpp, quant.kwargs.x): qco/validate.py says
    which keys it takes, and how a user adds one."""
    import re

    from qco.validate import closed_table_refusal

    found = re.search(r"Key '([^']+)' not in '(\w+)'", message)
    if not found:
        return None
    name, table = found.groups()
    stated = re.search(r"full_key: (\S+)", message)  # in a config file's error, Hydra writes it in the message
    full_key = full_key or (stated.group(1) if stated else "")
    where = full_key[: -len(name) - 1] if full_key.endswith(f".{name}") else ""
    return closed_table_refusal(where, name, table) if where else None


def _closed_choice(error: BaseException, args: List[str]) -> Optional[List[str]]:
    """A value outside one of the schema's closed choices (an enum of qco/groups/), as Hydra refuses it."""
    import re

    text, cause = "", error
    while cause is not None:  # Hydra's ConfigCompositionException carries OmegaConf's ValidationError as its cause
        text, cause = text + " " + _joined(cause), cause.__cause__
    found = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text)
    if not found:
        return None
    value, allowed = found.groups()
    given = next((a for a in args if "=" in a and value in a.split("=", 1)[1]), None)
    key = given.split("=", 1)[0].lstrip("+~") if given else (getattr(error.__cause__, "full_key", None) or "a key")
    first = allowed.split(",")[0].strip()
    stated = given.split("=", 1)[1] if given else value
    example = f"[{first}]" if stated.startswith("[") else first  # a list of choices (sweep.objective)
    return [f"{key}={stated}: {value!r} is not one of {allowed}; fix: e.g. {key}={example}"]


def _renamed(args: List[str]) -> Optional[List[str]]:
    """A key an earlier qco had (qco/config.py RENAMED_KEYS): its new name and why, rather than "no such key"."""
    from qco.config import RENAMED_KEYS

    for arg in args:
        name, _, value = arg.partition("=")
        new, why = RENAMED_KEYS.get(name.lstrip("+~"), (None, None))
        if new:
            return [f"{arg}: renamed {new} ({why}); fix: {new}={value}"]
    return None


def _unparsable(args: List[str]) -> Optional[str]:
    """The first command-line override that Hydra's own grammar rejects."""
    from hydra._internal.utils import get_args_parser

    parser = OverridesParser.create()
    for arg in get_args_parser().parse_known_args(args)[0].overrides:
        try:
            parser.parse_override(arg)
        except Exception:  # Hydra raises HydraException from its grammar's error listener
            return repr(arg)
    return None


def _joined(error: BaseException) -> str:
    """All of a multi-line message on one line (Hydra puts the key on the second line at times)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
