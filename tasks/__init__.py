"""Built-in task plugins: one module per task (see rnnbench.registry)."""
