"""Evaluation beyond the training length (length generalisation).

A model trained at ``T = task.seq_len`` is tested, after training, on fresh test
sets at every ``T'`` of ``task.eval_lengths`` (e.g. 2T, 4T), as in Delétang et
al., "Neural Networks and the Chomsky Hierarchy", ICLR 2023 (arXiv:2207.02098),
which trains on lengths up to N and reports accuracy on longer sequences.

The task is rebuilt from its config with ``seq_len = T'``, everything else
unchanged (:meth:`rnnbench.task.Task.length_variant`; the formal languages, whose
``seq_len`` is the longest training length, override it to test at exactly
``T'``), its test set drawn from the run's data seed, and the model's weights
are those the test was scored with (the best checkpoint). Each metric is the
average over the ``test_size`` sequences; ``solved`` is the task's own criterion
at ``T'``, and ``baseline`` the memoryless score at ``T'`` (the copy task's
baseline loss depends on T).

Recorded in the run record as ``metrics.length_generalisation``:
``{"200": {"mse": ..., "loss": ..., "solved": false, "baseline": 0.167}, ...}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .task import Task


def length_generalisation(task_config: dict, task: Task, model: nn.Module, data_seed: int) -> dict[str, Any]:
    """Test ``model`` at every length of ``task.eval_lengths``; ``{str(T'): {metric: value, ...}}``."""
    options = {k: v for k, v in task_config.items() if k not in ("name", "eval_lengths")}
    results: dict[str, Any] = {}
    for seq_len in task.eval_lengths:
        variant = task.length_variant(seq_len, options)
        metrics = evaluate(variant, model, variant.test_dataloader(data_seed))
        metrics["solved"] = variant.is_solved(metrics)
        metrics["baseline"] = variant.baseline().get(variant.metric)
        results[str(seq_len)] = metrics
    return results


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader, stage: str = "test") -> dict[str, float]:
    """The task's metrics over every batch of ``loader`` as Lightning's test loop computes
    them, in eval mode: each batch weighted by ``task.metric_weight``, then the corpus-level
    metrics of ``task.eval_epoch_end`` (perplexity, BLEU ...) from those means."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    task.eval_epoch_start(stage)
    totals: dict[str, float] = {}
    count = 0
    try:
        for batch in loader:
            batch = tuple(part.to(device) if isinstance(part, torch.Tensor) else part for part in batch)
            weight = task.metric_weight(batch)
            _, metrics = task.loss_and_metrics(model, batch)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value) * weight
            count += weight
    finally:
        model.train(was_training)
    means = {name: total / count for name, total in totals.items()}
    return {**means, **{name: float(value) for name, value in task.eval_epoch_end(stage, means).items()}}
