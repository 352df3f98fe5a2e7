"""Turn the exceptions a user's input can cause into one line each: the key, the value, what is
allowed, the fix. Anything else is a bug and keeps its traceback."""

from typing import List, Optional

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from qco.errors import QcoError


def one_line(error: BaseException) -> Optional[List[str]]:
    if isinstance(error, QcoError):
        return error.lines
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if error.options:
            allowed = ", ".join(sorted(error.options))
            return [f"{group}={option}: no such option; allowed: {allowed}; fix: e.g. {group}={sorted(error.options)[0]}"]
        return [f"{error.missing_cfg_file}: no such config; fix: check the name and --config-dir"]
    if isinstance(error, OverrideParseException):
        return [f"cannot parse the override: {_first_line(error)}; fix: write group=option or key=value"]
    if isinstance(error, (ConfigCompositionException, OmegaConfBaseException)):
        cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
        key = getattr(cause, "full_key", None)
        message = _first_line(cause)
        head = _first_line(error) if cause is not error else ""
        text = f"{head}: {message}" if head and head != message else message
        return [f"{key}: {text}" if key and key not in text else text]
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
