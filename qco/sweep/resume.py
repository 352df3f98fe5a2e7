"""Resume: a rerun of a sweep skips combinations already recorded, and reruns failed ones only
when asked (sweep.retry_failed=true). Refusals are decided by the rules, so they are kept too;
interrupted ones (Ctrl-C) and unreadable ones run again."""

import logging
from pathlib import Path
from typing import Optional

from qco.record import RESULTS, Record, Status, read_record

DONE = (Status.ok, Status.refused, Status.fits_smaller_cap)  # fits_smaller_cap: qco/sweep/job.py
log = logging.getLogger(__name__)


def recorded(run_dir: Path, retry_failed: bool) -> Optional[Record]:
    """The job's earlier record when it need not run again, else None."""
    path = run_dir / RESULTS
    if not path.exists():
        return None  # never ran, or was cut off before it recorded anything
    try:
        record = read_record(path)  # the shape every reader expects, or an error saying what is wrong
    except (OSError, ValueError) as error:
        log.warning("%s cannot be read or is not a run's record (%s: %s): running that job again; the other jobs' "
                    "results are untouched", path, type(error).__name__, error)
        return None
    if record.status in DONE or (record.status == Status.failed and not retry_failed):
        return record
    return None
