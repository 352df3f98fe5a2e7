"""The process of one sweep job: python -m qco.sweep.child RUN_DIR (reads RUN_DIR/job.json)."""

import json
import logging
import sys
from pathlib import Path


def main(run_dir: Path) -> None:
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
