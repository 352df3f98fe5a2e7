"""Hydra callback: when a multirun ends, aggregate its directory (table, picture, grid)."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


# The statuses of the last sweep this process ran, for __main__'s exit code: Hydra turns an exception
# raised in a callback into a warning, so the callback cannot fail the command itself.
LAST_SWEEP = {}


class AggregateSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from qco.sweep.aggregate import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = aggregate(sweep_dir)
        LAST_SWEEP.update(folder=sweep_dir, statuses=[row.status for row in rows])
        log.info("Rebuild these any time with: python -m qco.sweep.aggregate %s", sweep_dir)
