"""Tests of the synthetic tasks (copy, adding) and of SequenceModel."""

import inspect
import math
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rnnbench.errors import ConfigError
from rnnbench.models import OneHot, SequenceModel, count_parameters
from rnnbench.registry import get_task
from rnnbench.task import seeded_generator
from rnnbench.tasks.adding import AddingTask
from rnnbench.tasks.copy import CopyTask

CONF_TASK = Path(__file__).resolve().parents[1] / "conf" / "task"


# --- stand-ins for the real CellStack ------------------------------------------------
class GRUStack(nn.Module):
    """A tiny stand-in for rnnbench.stack.CellStack: one nn.GRU layer, batch-first."""

    def __init__(self, input_size: int, hidden_size: int = 8):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size

    def forward(self, x, state=None, lengths=None):
        return self.gru(x, state)

    def final_output(self, y, lengths=None):
        return last_step(y, lengths)


class IdentityStack(nn.Module):
    """y = x: lets a test see exactly which steps reach the head."""

    def __init__(self, input_size: int):
        super().__init__()
        self.output_size = input_size

    def forward(self, x, state=None, lengths=None):
        return x, state

    def final_output(self, y, lengths=None):
        return last_step(y, lengths)


def last_step(y, lengths=None):
    """The output at each sequence's last real step (a one-way stack's final output)."""
    last = torch.full((y.shape[0],), y.shape[1]) if lengths is None else torch.as_tensor(lengths)
    return y[torch.arange(y.shape[0]), last - 1]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- registry and configs ------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("copy", CopyTask), ("adding", AddingTask)])
def test_registered_under_its_name(name, cls):
    assert get_task(name) is cls
    assert cls.name == name


@pytest.mark.parametrize("name, cls", [("copy", CopyTask), ("adding", AddingTask)])
def test_yaml_lists_every_constructor_kwarg_with_its_default(name, cls):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_TASK / f"{name}.yaml"))
    assert list(cfg)[0] == "name" and cfg.pop("name") == name
    signature = inspect.signature(cls.__init__)
    defaults = {k: p.default for k, p in signature.parameters.items() if k != "self"}
    assert cfg == defaults
    cls(**cfg)  # the config as written is valid


# --- adding problem ----------------------------------------------------------------------
def test_adding_shapes_values_and_target():
    task = AddingTask(seq_len=50)
    inputs, targets = task.make_batch(500, gen(0))
    assert inputs.shape == (500, 50, 2) and targets.shape == (500, 1)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert values.min() >= 0 and values.max() < 1
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers.sum(dim=1) == 2).all()  # exactly two markers per sequence
    torch.testing.assert_close(targets[:, 0], (values * markers).sum(dim=1))


def test_adding_halves_puts_one_marker_in_each_half():
    T = 51  # odd: the halves are [0, 25) and [25, 51)
    inputs, _ = AddingTask(seq_len=T, placement="halves").make_batch(2000, gen(1))
    markers = inputs[..., 1]
    assert (markers[:, : T // 2].sum(dim=1) == 1).all()
    assert (markers[:, T // 2:].sum(dim=1) == 1).all()
    # Both halves are covered over the batch (uniform placement within each half).
    assert (markers.sum(dim=0) > 0).all()


def test_adding_anywhere_reaches_both_halves_and_the_same_half():
    T = 20
    inputs, _ = AddingTask(seq_len=T, placement="anywhere").make_batch(4000, gen(2))
    markers = inputs[..., 1]
    assert (markers.sum(dim=1) == 2).all()  # the two positions are distinct
    in_first_half = markers[:, : T // 2].sum(dim=1)
    # Uniform over distinct pairs: P(both in one half) = 2 * C(10,2) / C(20,2) = 90/190.
    same_half = (in_first_half != 1).float().mean().item()
    assert abs(same_half - 90 / 190) < 0.05
    assert (in_first_half == 2).any() and (in_first_half == 0).any() and (in_first_half == 1).any()
    # Every position is used, about equally often (expected 4000 * 2 / 20 = 400 each).
    counts = markers.sum(dim=0)
    assert counts.min() > 300 and counts.max() < 500


def test_adding_predicting_the_mean_scores_the_baseline():
    task = AddingTask(seq_len=30)
    batch = task.make_batch(20000, gen(3))
    _, metrics = task.loss_and_metrics(task.memoryless_model(), batch)  # predicts 1 whatever the input
    assert task.baseline()["mse"] == pytest.approx(1 / 6)
    assert metrics["mse"].item() == pytest.approx(1 / 6, abs=0.01)
    assert not task.is_solved({"mse": metrics["mse"].item()})
    assert task.is_solved({"mse": 0.005})


def test_adding_model_trains_end_to_end():
    task = AddingTask(seq_len=12, batch_size=16)
    model = task.build_model(GRUStack)
    batch = task.make_batch(16, gen(4))
    assert model(batch[0]).shape == (16, 1)
    loss, metrics = task.loss_and_metrics(model, batch)
    loss.backward()
    assert set(metrics) == {"loss", "mse"} and all(m.dim() == 0 for m in metrics.values())
    assert task.metric in metrics and task.metric_mode == "min"
    assert task.key_parameters() == {"seq_len": 12, "placement": "halves"}
    assert task.count_tokens(batch) == 16 * 12


# --- copy task ---------------------------------------------------------------------------
def test_copy_layout():
    T, K, N = 30, 10, 8
    task = CopyTask(seq_len=T, copy_len=K, n_symbols=N)
    inputs, targets = task.make_batch(200, gen(5))
    assert inputs.shape == targets.shape == (200, T + 2 * K)
    symbols = inputs[:, :K]
    assert symbols.min() >= 1 and symbols.max() <= N
    assert set(symbols.unique().tolist()) == set(range(1, N + 1))  # all symbols are drawn
    assert (inputs[:, K: T + K - 1] == 0).all()  # T-1 blanks
    assert (inputs[:, T + K - 1] == N + 1).all()  # the delimiter
    assert (inputs[:, T + K:] == 0).all()  # K blanks while recalling
    assert (targets[:, : T + K] == 0).all()  # T+K blanks
    assert torch.equal(targets[:, T + K:], symbols)  # then the symbols, in order
    assert task.count_tokens((inputs, targets)) == 200 * (T + 2 * K)


def test_copy_layout_with_the_shortest_gap():
    inputs, targets = CopyTask(seq_len=1, copy_len=3, n_symbols=4).make_batch(5, gen(6))
    assert inputs.shape == (5, 7)
    assert (inputs[:, 3] == 5).all()  # the delimiter follows the symbols at once
    assert torch.equal(targets[:, 4:], inputs[:, :3])


def test_copy_baseline_formula():
    task = CopyTask(seq_len=100)
    assert task.baseline()["loss"] == pytest.approx(10 * math.log(8) / 120)
    assert task.baseline()["recall_acc"] == pytest.approx(1 / 8)
    assert task.key_parameters() == {"seq_len": 100, "copy_len": 10, "n_symbols": 8}


def test_copy_memoryless_model_scores_the_baseline():
    T, K, N = 40, 10, 8
    task = CopyTask(seq_len=T, copy_len=K, n_symbols=N)
    inputs, targets = task.make_batch(4000, gen(7))
    model = task.memoryless_model()  # the paper's strategy: depends on the step only, not on the inputs
    logits = model(inputs)
    assert bool((logits[:, : T + K].argmax(-1) == 0).all())  # certain of blank while nothing is asked
    assert torch.equal(logits[0, T + K:, 1:], torch.zeros(K, N))  # uniform over the symbols while recalling
    _, metrics = task.loss_and_metrics(model, (inputs, targets))
    baseline = task.baseline()
    assert metrics["loss"].item() == pytest.approx(baseline["loss"], rel=1e-4)
    # argmax always picks symbol 1, right with probability 1/N.
    assert metrics["recall_acc"].item() == pytest.approx(baseline["recall_acc"], abs=0.02)
    assert metrics["acc"].item() == pytest.approx(baseline["acc"], abs=0.01)
    assert not task.is_solved({k: v.item() for k, v in metrics.items()})


def test_copy_perfect_model_is_solved():
    task = CopyTask(seq_len=20)
    inputs, targets = task.make_batch(32, gen(8))

    class Oracle(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(targets, task.n_symbols + 1).float() * 50

    _, metrics = task.loss_and_metrics(Oracle(), (inputs, targets))
    assert metrics["recall_acc"].item() == 1.0 and metrics["acc"].item() == 1.0
    assert metrics["loss"].item() < 1e-6
    assert task.is_solved({"recall_acc": 1.0})


def test_copy_model_trains_end_to_end():
    task = CopyTask(seq_len=15, copy_len=4, n_symbols=5)
    model = task.build_model(GRUStack)
    assert model.stack.gru.input_size == 5 + 2  # one-hot: blank, symbols, delimiter
    batch = task.make_batch(8, gen(9))
    assert model(batch[0]).shape == (8, 15 + 8, 5 + 1)
    loss, metrics = task.loss_and_metrics(model, batch)
    loss.backward()
    assert set(metrics) == {"loss", "recall_acc", "acc"} and all(m.dim() == 0 for m in metrics.values())
    assert task.metric in metrics and task.metric_mode == "max"
    assert not task.causal  # see the comment in tasks/copy.py


# --- determinism and loaders (SyntheticTask) ---------------------------------------------
TASKS = [lambda: CopyTask(seq_len=20, batch_size=8, val_size=40, test_size=40),
         lambda: AddingTask(seq_len=20, batch_size=8, val_size=40, test_size=40)]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("make_task", TASKS, ids=["copy", "adding"])
def test_same_seed_same_data_different_seed_different_data(make_task):
    task = make_task()
    assert same(task.make_batch(50, gen(0)), task.make_batch(50, gen(0)))
    assert not same(task.make_batch(50, gen(0)), task.make_batch(50, gen(1)))


@pytest.mark.parametrize("make_task", TASKS, ids=["copy", "adding"])
def test_fresh_train_batches_are_reproducible_and_depend_on_rank(make_task):
    task = make_task()

    def first_batches(rank, start_step=0, count=3):
        loader = iter(task.train_dataloader(data_seed=7, rank=rank, start_step=start_step))
        return [next(loader) for _ in range(count)]

    run_a, run_b = first_batches(rank=0), first_batches(rank=0)
    for a, b in zip(run_a, run_b):
        assert same(a, b)
    assert not same(run_a[0], run_a[1])  # fresh data every step
    assert same(first_batches(rank=0, start_step=2, count=1)[0], run_a[2])  # resume at step 2
    assert not same(first_batches(rank=1)[0], run_a[0])
    assert not same(next(iter(task.train_dataloader(data_seed=8))), run_a[0])
    assert run_a[0][0].shape[0] == task.batch_size


@pytest.mark.parametrize("make_task", TASKS, ids=["copy", "adding"])
def test_val_set_fixed_by_seed_and_differs_from_test(make_task):
    task = make_task()

    def everything(loader):
        parts = list(loader)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    val = everything(task.val_dataloader(data_seed=3))
    assert val[0].shape[0] == 40
    assert same(val, everything(task.val_dataloader(data_seed=3)))
    assert not same(val, everything(task.val_dataloader(data_seed=4)))
    assert not same(val, everything(task.test_dataloader(data_seed=3)))


@pytest.mark.parametrize("cls", [CopyTask, AddingTask])
def test_train_size_gives_a_finite_loader(cls):
    task = cls(seq_len=20, batch_size=8, train_size=50)
    loader = task.train_dataloader(data_seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 50 // 8  # drop_last
    assert all(b[0].shape[0] == 8 for b in batches)


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (AddingTask, {"seq_len": -5}, "task.seq_len"),
        (AddingTask, {"seq_len": 1}, "task.seq_len"),
        (AddingTask, {"seq_len": 100.0}, "task.seq_len"),
        (AddingTask, {"placement": "middle"}, "task.placement"),
        (CopyTask, {"seq_len": -5}, "task.seq_len"),
        (CopyTask, {"seq_len": True}, "task.seq_len"),
        (CopyTask, {"n_symbols": 1}, "task.n_symbols"),
        (CopyTask, {"copy_len": 0}, "task.copy_len"),
        (CopyTask, {"batch_size": 0}, "task.batch_size"),
        (CopyTask, {"train_size": 10}, "task.train_size"),  # fewer than one batch
    ],
)
def test_bad_values_raise_config_error_naming_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert key in message and repr(next(iter(kwargs.values()))) in message


# --- speed: generation is vectorised ----------------------------------------------------------
@pytest.mark.parametrize("cls", [AddingTask, CopyTask])
def test_make_batch_is_vectorised(cls):
    # 10000 sequences of T=1000 take a few tens of milliseconds by tensor ops; a
    # per-sample Python loop would take seconds. No timing assert (shared CI
    # machines are noisy); the duration shows up with `pytest --durations`.
    task = cls(seq_len=1000)
    start = time.perf_counter()
    inputs, targets = task.make_batch(10000, seeded_generator(0, 1))
    elapsed = time.perf_counter() - start
    assert inputs.shape[:2] == (10000, task.seq_len + 2 * getattr(task, "copy_len", 0))
    print(f"{cls.__name__}.make_batch(10000) at T=1000: {elapsed:.3f} s")


# --- SequenceModel -----------------------------------------------------------------------------
def test_sequence_model_readouts():
    x = torch.randn(3, 5, 4)
    every = SequenceModel(IdentityStack, 4, 2, readout="all")
    last = SequenceModel(IdentityStack, 4, 2, readout="last")
    last.head.load_state_dict(every.head.state_dict())
    assert every(x).shape == (3, 5, 2)
    torch.testing.assert_close(last(x), every(x)[:, -1])
    # With lengths, "last" reads the last real step, not the padding.
    lengths = torch.tensor([5, 2, 1])
    torch.testing.assert_close(last(x, lengths=lengths), every(x)[torch.arange(3), lengths - 1])
    with pytest.raises(ValueError, match="readout"):
        SequenceModel(IdentityStack, 4, 2, readout="first")


def test_one_hot_encoder_follows_the_model_dtype():
    model = SequenceModel(IdentityStack, 6, 3, encoder=OneHot(6)).double()
    ids = torch.tensor([[0, 5, 2]])
    encoded = model.encoder(ids)
    assert encoded.dtype == torch.float64
    torch.testing.assert_close(encoded, nn.functional.one_hot(ids, 6).double())
    assert "encoder.eye" not in model.state_dict()  # nothing to save or load


def test_count_parameters_counts_trainable_only():
    model = SequenceModel(lambda n: GRUStack(n, hidden_size=8), 3, 2)
    gru = 3 * (8 * 3 + 8 * 8 + 8 + 8)
    head = 8 * 2 + 2
    assert count_parameters(model) == gru + head
    model.head.weight.requires_grad_(False)
    assert count_parameters(model) == gru + 2


def test_copy_headline_metric_and_extra_classes():
    """The TCN scripts' copy task: 10 output classes, the loss as the headline metric."""
    task = CopyTask(seq_len=5, copy_len=2, n_classes=10, metric="loss", solved_threshold=0.05)
    assert (task.metric, task.metric_mode) == ("loss", "min")
    model = task.build_model(lambda n: GRUStack(n))
    inputs, targets = task.make_batch(3, gen(0))
    assert model(inputs).shape == (3, 5 + 4, 10)
    loss, metrics = task.loss_and_metrics(model, (inputs, targets))
    assert float(metrics["loss"]) == float(loss) > 0.05
    assert task.is_solved({"loss": 0.04}) and not task.is_solved({"loss": 0.06})  # the threshold is on the loss
    with pytest.raises(ConfigError, match="task.n_classes=8 is invalid"):
        CopyTask(n_classes=8)  # blank + 8 symbols need 9
    with pytest.raises(ConfigError, match="task.metric='bleu' is invalid"):
        CopyTask(metric="bleu")
