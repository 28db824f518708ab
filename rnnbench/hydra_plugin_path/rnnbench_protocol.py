"""rnnbench's sweepers as Hydra sees them: Hydra instantiates sweepers only from its
``hydra_plugins`` namespace, and :func:`rnnbench.protocol.register_with_hydra` puts this
folder on that namespace (so the module is ``hydra_plugins.rnnbench_protocol``). The
sweepers themselves are in :mod:`rnnbench.protocol`."""

from rnnbench import protocol


class TuneSweeper(protocol.TuneSweeper):
    """``hydra/sweeper=tune``: :class:`rnnbench.protocol.TuneSweeper`."""


class HorizonSweeper(protocol.HorizonSweeper):
    """``hydra/sweeper=horizon``: :class:`rnnbench.protocol.HorizonSweeper`."""


class ProtocolSweeper(protocol.ProtocolSweeper):
    """``hydra/sweeper=protocol``: :class:`rnnbench.protocol.ProtocolSweeper`."""
