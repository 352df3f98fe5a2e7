"""What Hydra must know before it composes a config: qco's schema, its resolvers and its SLURM launcher."""

from hydra.core.config_store import ConfigStore

from qco.config import Config


def register_configs() -> None:
    from qco.resolvers import register_resolvers
    from qco.sweep.slurm import register_launcher

    ConfigStore.instance().store(name="qco_schema", node=Config)
    register_resolvers()
    register_launcher()
