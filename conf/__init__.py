"""Hydra configs shipped with rnnbench (read through pkg://rnnbench.conf).

Importing this package puts the defaults of the core groups (:mod:`rnnbench.config`)
into Hydra's ConfigStore, where the YAML presets of ``trainer/``, ``optim/``,
``model/`` and ``logger/`` and the root ``config.yaml`` start from them.
"""

from rnnbench.config import register_defaults

register_defaults()
