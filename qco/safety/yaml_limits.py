"""Bounded work on a config file: before Hydra reads a YAML file from a folder (--config-dir,
--config-path, a hydra.searchpath entry), the file is checked here, in time and memory bounded by
its size, so that a hostile file is one line instead of a hang or a traceback.

Only the files a command selects are read: Hydra opens a file when its defaults list or an override
names it, and lists folders (names only) to offer options. The same checks apply to pkg:// folders
(qco's own configs and Hydra's). A selected file is refused when it
- lies outside its config folder (a group option or defaults entry with `..`, or an absolute path),
- is larger than MAX_BYTES, or is not UTF-8,
- is not YAML, or its aliases expand to more than MAX_NODES nodes (a "billion laughs"), or refer to
  themselves (a recursive alias, which OmegaConf would follow forever)."""

import contextlib
import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterator

import yaml
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra._internal.core_plugins.importlib_resources_config_source import (
    ImportlibResourcesConfigSource,
)
from hydra._internal.sources_registry import SourcesRegistry
from hydra.plugins.config_source import ConfigResult

from qco.errors import QcoError

MAX_BYTES = 1024 * 1024  # qco's largest packaged option is under 5 kB
MAX_NODES = 100_000  # after aliases are expanded; qco's largest option has about 200


class UnsafeConfigFile(QcoError):
    """A config file refused before it is read into a config."""


def escapes_its_folder(config_path: str) -> bool:
    """Whether a path relative to a config folder leaves it (`..`, or an absolute path)."""
    path = PurePosixPath(config_path.replace(os.sep, "/"))
    return path.is_absolute() or ".." in path.parts


_CHECKED = set()  # (path, inode, size, mtime) of files found safe: a sweep composes each many times


def check_yaml_file(path: str) -> None:
    """Raise UnsafeConfigFile with one line if the file is unsafe to hand to OmegaConf."""
    info = os.stat(path)
    key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _CHECKED:
        return
    _check_yaml_file(path)
    _CHECKED.add(key)


def _check_yaml_file(path: str) -> None:
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)  # read(): a FIFO or /dev/zero reports no size
    if len(data) > MAX_BYTES:
        raise UnsafeConfigFile(f"{path}: larger than {MAX_BYTES // 1024} kB, far more than a config needs; "
                               "fix: remove the file from the config folder, or split it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnsafeConfigFile(f"{path}: not UTF-8 (byte {error.start}: {data[error.start:error.start + 1]!r}); "
                               "fix: save the file as UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # the node graph: aliases are not expanded here
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UnsafeConfigFile(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}); "
                               "fix: correct the file or remove it from the config folder") from None
    if root is not None:
        _expanded_size(root, path, {}, set())


def _expanded_size(node, path: str, sizes: dict, open_nodes: set) -> int:
    """How many nodes the file becomes once every alias is expanded; each node is visited once."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise UnsafeConfigFile(f"{path}:{node.start_mark.line + 1}: a recursive alias (a node that contains "
                               "itself), which never ends when expanded; fix: remove the alias")
    open_nodes.add(id(node))
    children = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    size = 1 + sum(_expanded_size(child, path, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_NODES:
        raise UnsafeConfigFile(f"{path}: its aliases expand to more than {MAX_NODES} values (a YAML bomb); "
                               "fix: write the values out, or remove the file from the config folder")
    sizes[id(node)] = size
    return size


def _refuse_escape(config_path: str, folder: str) -> None:
    if escapes_its_folder(config_path):
        raise UnsafeConfigFile(
            f"{config_path}: leaves the config folder {folder}; a group option or defaults entry must name a file "
            "inside the config search path; fix: name the option without '..' or a leading '/', and add its folder "
            "with --config-dir")


class CheckedFileConfigSource(FileConfigSource):
    """Hydra's source for file:// folders, checking each file before Hydra's own reading of it."""

    def load_config(self, config_path: str) -> ConfigResult:
        _refuse_escape(config_path, self.path)
        full_path = os.path.realpath(os.path.join(self.path, self._normalize_file_name(config_path)))
        if os.path.exists(full_path):
            check_yaml_file(full_path)
        try:
            return super().load_config(config_path)
        except yaml.YAMLError as error:  # a tag OmegaConf's loader does not take (!!python/name:...), say
            raise UnsafeConfigFile(f"{full_path}: YAML that OmegaConf cannot read ({str(error).splitlines()[0][:160]}); "
                                   "a config is plain YAML, with no tags; fix: write the value out") from None


class CheckedPackageConfigSource(ImportlibResourcesConfigSource):
    """Hydra's source for pkg:// folders (qco's own configs, Hydra's), with the same checks."""

    def load_config(self, config_path: str) -> ConfigResult:
        _refuse_escape(config_path, f"pkg://{self.path}")
        resource = resources.files(self.path).joinpath(self._normalize_file_name(config_path))
        if isinstance(resource, Path) and resource.exists():  # a zipped package is not a file to open
            check_yaml_file(str(resource))
        return super().load_config(config_path)


@contextlib.contextmanager
def checked_config_files() -> Iterator[None]:
    """Within it, Hydra's file:// and pkg:// folders are read through the checked sources. Hydra's
    registry keeps the first class it is given for a scheme (and hands its state to a launcher's
    workers), so the entries are swapped for the check and put back after it: Hydra's own
    composition then reads the files this one has checked."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers Hydra's config sources
    types = SourcesRegistry.instance().types
    saved = dict(types)
    types.update({source.scheme(): source for source in (CheckedFileConfigSource, CheckedPackageConfigSource)})
    try:
        yield
    finally:
        types.clear()
        types.update(saved)
