"""Diagnostics (gradient norms through time, gates) and evaluation beyond the
training length, in process on tiny trained models."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.cli import compose_config
from rnnbench import diagnostics
from rnnbench.errors import ConfigError
from rnnbench.evaluation import evaluate, length_generalisation
from rnnbench.experiment import build_experiment
from rnnbench.task import seeded_generator
from rnnbench.tasks.adding import AddingTask


def _config(cell: str = "gru", task: str = "adding", **task_options) -> dict:
    return compose_config([f"cell={cell}", f"task={task}", "cell.hidden_size=8", "task.seq_len=12",
                           "task.test_size=40", *(f"task.{k}={v}" for k, v in task_options.items())])


def _trained(config: dict, steps: int = 30):
    exp = build_experiment(config)
    optimizer = torch.optim.Adam(exp.model.parameters(), lr=1e-2)
    for step in range(steps):
        loss, _ = exp.task.loss_and_metrics(exp.model, exp.task.make_batch(32, seeded_generator(0, step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return exp


def test_gru_gradient_norms_through_time_and_gates():
    exp = _trained(_config())
    inputs, targets = exp.task.make_batch(50, seeded_generator(1))
    data = diagnostics.collect(exp.task, exp.model, (inputs, targets))
    T = 12
    assert data["seq_len"] == T and len(data["grad_norm"]) == T
    assert all(g > 0 and torch.isfinite(torch.tensor(g)) for g in data["grad_norm"])
    # Independent oracle at the last step: the head reads h_T, so for one sequence's
    # loss (p - y)^2, dl/dh_T = 2 (p - y) w_head.
    with torch.no_grad():
        prediction = exp.model(inputs)
    expected = (2 * (prediction - targets).abs().squeeze(1) * exp.model.head.weight.detach().norm()).mean()
    assert data["grad_norm"][-1] == pytest.approx(float(expected), rel=1e-4)
    # Gates per step, in (0, 1); the marker-aligned view starts 5 steps before the marker.
    for name in ("l0.fwd.z", "l0.fwd.r"):
        assert len(data["gates"][name]) == T and all(0 < v < 1 for v in data["gates"][name])
    aligned = data["aligned_first_marker"]
    assert aligned["offsets"][:6] == [-5, -4, -3, -2, -1, 0] and len(aligned["l0.fwd.z"]) == T + 5
    # At offset 0 every sequence contributes: the mean of z at each first marker.
    first = AddingTask.marker_positions(inputs)[:, 0]
    with torch.no_grad():
        _, _, gates = exp.model.stack.forward_with_gates(inputs)
    at_marker = gates["l0.fwd.z"].mean(2)[torch.arange(len(first)), first].mean()
    assert aligned["l0.fwd.z"][5] == pytest.approx(float(at_marker), rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "sru", "indrnn"])
def test_diagnostics_for_other_state_kinds(cell):
    """LSTM carries (h, c), SRU c, IndRNN h with ReLU saturation statistics."""
    exp = build_experiment(_config(cell, task="copy", copy_len=3))
    inputs, targets = exp.task.make_batch(16, seeded_generator(2))
    data = diagnostics.collect(exp.task, exp.model, (inputs, targets))
    assert len(data["grad_norm"]) == inputs.shape[1] == 12 + 2 * 3
    assert all(g >= 0 for g in data["grad_norm"]) and data["grad_norm"][-1] > 0
    view, gate = {"lstm": ("retention", "l0.fwd.f"), "sru": ("retention", "l0.fwd.f"),
                  "indrnn": ("saturation", "l0.fwd.a")}[cell]
    assert data[view]["gate"] == gate and len(data[view]["values"]) == inputs.shape[1]
    if cell == "indrnn":  # the fraction of ReLU units that are off, recomputed from the gate
        with torch.no_grad(), exp.model.stack.recording() as rec:
            exp.model(inputs)
        expected = (rec.gates["l0.fwd.a"] <= 0).float().transpose(0, 1).flatten(1).mean(1)
        assert data["saturation"]["values"] == pytest.approx(expected.tolist())
    assert "aligned_first_marker" not in data  # the copy task marks no positions


def test_length_generalisation_matches_an_independently_built_task():
    config = _config(eval_lengths=[20, 30])
    exp = _trained(config)
    results = length_generalisation(config["task"], exp.task, exp.model, data_seed=3)
    assert set(results) == {"20", "30"}
    direct = AddingTask(seq_len=30, test_size=40)
    expected = evaluate(direct, exp.model, direct.test_dataloader(3))
    assert results["30"]["mse"] == pytest.approx(expected["mse"])
    assert results["30"]["solved"] is (expected["mse"] <= 0.01)
    assert results["30"]["baseline"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("value", [[1], "long", [10, "x"]])
def test_bad_eval_lengths_are_refused_before_training(value):
    config = _config()
    config["task"]["eval_lengths"] = value
    with pytest.raises(ConfigError, match="task.eval_lengths"):
        build_experiment(config)


def test_diagnostics_flag_must_be_a_boolean():
    config = _config()
    config["diagnostics"] = "yes"
    with pytest.raises(ConfigError, match="diagnostics='yes' is invalid"):
        build_experiment(config)


# --- every task: language modelling and translation (issue 12.5) -------------------------------
def _task_experiment(task: str, cell: str):
    overrides = {"lm": ["task.dataset=demo", "task.bptt=9", "task.eval_batch_size=6", "task.embedding_size=8",
                        "task.dropout=0.0"],
                 "translation": ["task.synthetic_train_size=200", "task.synthetic_val_size=40",
                                 "task.synthetic_test_size=40", "task.batch_size=16", "task.embedding_size=8"]}[task]
    return build_experiment(compose_config([f"task={task}", f"cell={cell}", "cell.hidden_size=8", *overrides]))


@pytest.mark.parametrize("task", ["lm", "translation"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_diagnostics_on_the_real_text_tasks(task, cell):
    """The diagnostic batch of the LM (inputs, targets, first) and of translation (src,
    lengths, tgt, index), through the same collect: gradients through time of the first
    stack (the translation encoder), the retention gate's view, and no decoding."""
    exp = _task_experiment(task, cell)
    batch = exp.task.diagnostic_batch(0, 5)
    data = diagnostics.collect(exp.task, exp.model, batch)
    steps = batch[0].shape[1]  # LM: the window; translation: the longest source of the batch
    assert data["batch_size"] == 5 and data["seq_len"] == steps == len(data["grad_norm"])
    assert all(math.isfinite(g) and g > 0 for g in data["grad_norm"]), data["grad_norm"]
    gate = {"gru": "l0.fwd.z", "lstm": "l0.fwd.f"}[cell]
    assert data["retention"]["gate"] == gate and len(data["retention"]["values"]) == steps
    assert all(0 < v < 1 for v in data["retention"]["values"])
    if task == "translation":  # the loss ran outside an evaluation pass: nothing was decoded
        assert exp.task._hypotheses == {} and exp.task._stage is None
    else:  # independent oracle at the last step: only the last prediction reads the top state h_T
        inputs, targets, _ = batch
        with torch.no_grad():
            logits, (state,) = exp.model(inputs)
            probs = torch.softmax(logits[:, -1], dim=-1)
            probs[torch.arange(5), targets[:, -1]] -= 1  # d CE / d logits
            # l_b = batch-mean loss x B = (1/T) sum_t CE_bt: dl_b/dh_T = W^T (p - y) / T
            grad_h = probs @ exp.model.decoder.weight / steps
            squares = grad_h.pow(2).sum(1)
            if cell == "lstm":  # the state is (h, c), and h_T = o_T * tanh(c_T) also reads c_T
                h, c = state
                squares = squares + (grad_h * (h / torch.tanh(c)) * (1 - torch.tanh(c) ** 2)).pow(2).sum(1)
        assert data["grad_norm"][-1] == pytest.approx(float(squares.sqrt().mean()), rel=1e-4)
