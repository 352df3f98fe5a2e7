"""qco's SLURM launcher: hydra-submitit-launcher's, with one change (qco/sweep/slurm.py): a job that ends without a
result (cancelled while pending, killed hard, timed out) becomes that job's row rather than the end of the sweep.

Hydra instantiates launchers only from the hydra_plugins namespace, hence this package beside qco; qco also
registers it by hand (qco/registry.py register_launcher), since an editable install's finder hides it from
Hydra's scan of the namespace. Without qco[slurm] it defines nothing, so that Hydra's scan of every
hydra_plugins package, in any Hydra app on the machine, imports it without error."""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:
    SlurmLauncher = None

if SlurmLauncher is not None:
    class QcoSlurmLauncher(SlurmLauncher):
        def launch(self, job_overrides, initial_job_idx):
            from qco.sweep.slurm import gather_results

            return gather_results(self, job_overrides, initial_job_idx, super().launch)
