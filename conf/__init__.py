"""Hydra configs shipped with rnnbench (read through pkg://rnnbench.conf)."""
