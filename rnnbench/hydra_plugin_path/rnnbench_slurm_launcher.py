"""rnnbench's SLURM launcher as Hydra sees it (``hydra/launcher=slurm``): Hydra instantiates
launchers only from its ``hydra_plugins`` namespace, and
:func:`rnnbench.protocol.register_with_hydra` puts this folder on that namespace (so the
module is ``hydra_plugins.rnnbench_slurm_launcher``). The launcher itself is in
:mod:`rnnbench.slurm_launcher`; without the ``slurm`` extra it is no Hydra plugin."""

from rnnbench import slurm_launcher


class SlurmLauncher(slurm_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: :class:`rnnbench.slurm_launcher.SlurmLauncher`."""
