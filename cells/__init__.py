"""Built-in cell plugins: one module per cell family (see rnnbench.registry)."""
