"""Hydra callback: when a multirun ends, aggregate its directory (table, picture, grid)."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class AggregateSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from qco.sweep.aggregate import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        aggregate(sweep_dir)
        log.info("Rebuild these any time with: python -m qco.sweep.aggregate %s", sweep_dir)
