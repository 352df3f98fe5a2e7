"""The process of one sweep job: python -m qco.sweep.child RUN_DIR (reads RUN_DIR/job.json)."""

import json
import logging
import sys
from pathlib import Path


def end_with_parent() -> None:
    """The job's lock belongs to the sweep's process that started this one (qco/sweep/job.py): if that process dies,
    even by kill -9, the kernel kills this one too (PR_SET_PDEATHSIG), so that a resumed sweep, which takes the lock
    again, never has two processes measuring one job. Where it had already died, this one ends at once."""
    import ctypes
    import os
    import signal

    from qco.sweep.isolate import PARENT

    parent = os.environ.get(PARENT)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the sweep died before the line above
        os._exit(128 + signal.SIGKILL)


def main(run_dir: Path) -> None:
    end_with_parent()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from qco.config import typed
    from qco.errors import QcoError
    from qco.runner import run
    from qco.sweep.isolate import JOB_FILE

    job = json.loads((run_dir / JOB_FILE).read_text())
    try:
        run(typed(job["config"]), run_dir, job["overrides"])
    except QcoError as error:  # already recorded in results.json as "refused": a clean end
        for line in error.lines:
            logging.getLogger("qco").error(line)
    # any other exception propagates: a non-zero exit, and results.json says "failed" with why


if __name__ == "__main__":
    main(Path(sys.argv[1]))
