"""What Hydra must know before it composes a config: qco's schema, its resolvers and its SLURM launcher."""

from hydra.core.config_store import ConfigStore

from qco.config import Config


def register_configs() -> None:
    from qco.resolvers import register_resolvers

    ConfigStore.instance().store(name="qco_schema", node=Config)
    register_resolvers()
    register_launcher()


def register_launcher() -> None:
    """hydra_plugins.qco_launcher.QcoSlurmLauncher (conf/hydra/launcher/slurm.yaml) made known to Hydra, which
    would find it by scanning the hydra_plugins namespace, except from an editable install (its finder does not
    list the package). Without qco[slurm] there is none to register."""
    from hydra.core.plugins import Plugins

    import hydra_plugins.qco_launcher as ours

    if getattr(ours, "QcoSlurmLauncher", None) is not None:
        Plugins.instance().register(ours.QcoSlurmLauncher)
