"""Resume: a rerun of a sweep skips combinations already recorded, and reruns failed ones only
when asked (sweep.retry_failed=true). Refusals are decided by the rules, so they are kept too;
interrupted ones (Ctrl-C) and unreadable ones run again."""

import logging
from pathlib import Path
from typing import List, Optional

from qco.record import RESULTS, Record, Status, read_record
from qco.resolvers import NOT_PART_OF_THE_NAME

DONE = (Status.ok, Status.refused, Status.fits_smaller_cap)  # fits_smaller_cap: qco/sweep/job.py
log = logging.getLogger(__name__)


def what_it_ran(overrides: List[str]) -> set:
    """The overrides that make the combination (not where it is kept, nor how the sweep treats records)."""
    return {o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(NOT_PART_OF_THE_NAME)}


def same_combination(record: Record, key: str, overrides: List[str]) -> bool:
    return record.key == key and what_it_ran(record.overrides) == what_it_ran(overrides)


def recorded(run_dir: Path, retry_failed: bool, key: Optional[str] = None,
             overrides: Optional[List[str]] = None) -> Optional[Record]:
    """The job's earlier record when it need not run again, else None. A record is the job's only where it ran the
    same combination (`key`, `overrides`): a folder that held another job's is measured again."""
    path = run_dir / RESULTS
    if not path.exists():
        return None  # never ran, or was cut off before it recorded anything
    try:
        record = read_record(path)  # the shape every reader expects, or an error saying what is wrong
    except (OSError, ValueError) as error:
        log.warning("%s cannot be read or is not a run's record (%s: %s): running that job again; the other jobs' "
                    "results are untouched", path, type(error).__name__, error)
        return None
    if key is not None and not same_combination(record, key, overrides or []):
        log.warning("%s records another combination (%s; overrides %s), not this job's (%s; overrides %s): measuring "
                    "this one", path, record.key, sorted(what_it_ran(record.overrides)), key,
                    sorted(what_it_ran(overrides or [])))
        return None
    if record.status in DONE or (record.status == Status.failed and not retry_failed):
        return record
    return None


def another_combination(run_dir: Path, key: str, overrides: List[str]) -> bool:
    """Whether the job's folder holds a readable record of another combination."""
    try:
        return not same_combination(read_record(run_dir / RESULTS), key, overrides)
    except (OSError, ValueError):
        return False
