"""What a config may name. Config files are shared like code, so a file (packaged, an experiment, or
one passed with --config-dir) and a command-line override can only point at qco's own entry points
and the libraries' known ones; anything else is refused before Hydra instantiates anything.

Checked statically, on every YAML file that the search path can reach and on every override, so
that a target is refused whether or not this command selects the option that holds it."""

from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

import yaml

# where a `_target_` (Hydra instantiate) may point
TARGET_PREFIXES = (
    "qco.",                              # qco's own callback
    "torchao.quantization.",             # torchao config arguments such as PerRow()
    "hydra._internal.core_plugins.",     # Hydra's basic launcher and sweeper
    "hydra_plugins.hydra_joblib_launcher.",
    "hydra_plugins.hydra_submitit_launcher.",
    "hydra_plugins.hydra_optuna_sweeper.",
    "optuna.samplers.",
)
# logging.config.dictConfig also builds objects: `()` factories and handler/formatter `class` paths
LOGGING_PREFIXES = ("logging.", "colorlog.", "hydra.")
LOGGING_SECTIONS = ("handlers", "formatters", "filters")


def _walk(node, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, path + (str(key),))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, path + (str(index),))
    else:
        yield path, node


def _disallowed(path: Tuple[str, ...], value) -> bool:
    key = path[-1] if path else ""
    if key == "_target_":
        return not str(value).startswith(TARGET_PREFIXES)
    if key == "()" or (key == "class" and any(part in LOGGING_SECTIONS for part in path[:-1])):
        return not str(value).startswith(LOGGING_PREFIXES)
    return False


def _refusal(where: str, value) -> str:
    return (f"{where}={value}: not an allowed target; a config may name only qco's own entry points and "
            f"those of the libraries it drives ({', '.join(p.rstrip('.') for p in TARGET_PREFIXES)}); "
            "fix: remove it, or use a packaged option")


def scan_files(config_dirs: Iterable[Path]) -> List[str]:
    """Every YAML file under the folders, and under the file:// folders their hydra.searchpath adds."""
    problems, folders, seen = [], list(config_dirs), set()
    while folders:
        folder = Path(folders.pop()).resolve()
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                content = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as error:
                mark = getattr(error, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark else str(path)
                problems.append(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}); "
                                "fix: correct the file or remove it from the config folder")
                continue
            for key_path, value in _walk(content):
                if _disallowed(key_path, value):
                    problems.append(_refusal(f"{path}: {'.'.join(key_path)}", value))
                if key_path[:2] == ("hydra", "searchpath") and str(value).startswith("file://"):
                    folders.append(Path(str(value)[len("file://"):]))
    return problems


def scan_overrides(overrides: Iterable[str]) -> List[str]:
    """Command-line overrides, parsed with Hydra's own grammar (unparsable ones are Hydra's to report)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    problems = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:
            continue
        path = tuple(override.key_or_group.split("."))
        values = override.sweep_iterator() if override.is_sweep_override() else [override.value()]
        for value in values:
            for sub_path, leaf in _walk(value, path):
                if _disallowed(sub_path, leaf):
                    problems.append(_refusal(text.split("=")[0], leaf))
    return problems


def check_command_line(args: List[str], packaged_conf: Path) -> List[str]:
    """Everything a `python -m qco` command line can reach: the packaged configs, --config-dir and
    --config-path folders, and the overrides. Uses Hydra's own argument parser."""
    from hydra._internal.utils import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(args)
    folders = [packaged_conf]
    for folder in (parsed.config_dir, parsed.config_path):
        if folder and not str(folder).startswith("pkg://"):
            folders.append(Path(folder))
    for override in parsed.overrides:  # hydra.searchpath=[file:///a,...] on the command line
        if override.startswith("hydra.searchpath="):
            folders += [Path(p.strip(" []'\"")[len("file://"):]) for p in override.split("=", 1)[1].split(",")
                        if p.strip(" []'\"").startswith("file://")]
    return scan_files(folders) + scan_overrides(parsed.overrides)
