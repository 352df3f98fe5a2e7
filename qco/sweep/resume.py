"""Resume: a rerun of a sweep skips combinations already recorded, and reruns failed ones only
when asked (sweep.retry_failed=true). Refusals are decided by the rules, so they are kept too."""

import json
from pathlib import Path
from typing import Optional

DONE = ("ok", "refused")


def recorded(run_dir: Path, retry_failed: bool) -> Optional[dict]:
    """The job's earlier record when it need not run again, else None."""
    try:
        record = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None  # never ran, or was cut off before it recorded anything whole
    if record.get("status") in DONE or (record.get("status") == "failed" and not retry_failed):
        return record
    return None
