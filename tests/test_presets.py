"""The paper presets, setting by setting, against the sources they cite: every value a
preset's YAML claims to take from a paper or an authors' script is checked here, with the
number written from that source (cited per test), and every known difference is listed in
the preset's ``deviations`` (which every run record copies)."""

from __future__ import annotations

import pytest

from helpers.cli import compose_config
from rnnbench.experiment import build_experiment


def preset(name: str, *overrides: str) -> dict:
    return compose_config([f"experiment={name}", *overrides])


def test_tcn_adding_follows_add_test_py():
    """locuslab/TCN TCN/adding_problem/add_test.py (argparse defaults; data_generator(50000)
    and (1000); the training loop over range(0, 50000, 32) with the last partial batch) and
    the paper's Table 1 (T=600, ~70K parameters)."""
    c = preset("tcn_adding", "cell=lstm_plain")
    t = c["task"]
    assert (t["seq_len"], t["placement"], t["train_size"], t["test_size"], t["batch_size"]) == (600, "anywhere", 50000,
                                                                                               1000, 32)
    assert t["train_order"] == "in_order"
    assert (c["optim"]["name"], c["optim"]["lr"], c["optim"]["grad_clip"]) == ("adam", 4e-3, None)
    steps_per_epoch = -(-50000 // 32)  # 1563: 1562 full batches and one of 16
    assert c["trainer"]["val_check_interval"] == steps_per_epoch and c["trainer"]["max_steps"] == 10 * steps_per_epoch
    assert c["trainer"]["test_checkpoint"] == "last" and c["trainer"]["stop_when_solved"] is False
    assert c["model"]["param_budget"] == 70000 and c["cell"]["forget_bias"] == 0.0  # torch.nn.LSTM's init
    assert any("validation set" in d for d in c["deviations"])


def test_tcn_copy_follows_copymem_test_py():
    """locuslab/TCN TCN/copy_memory/copymem_test.py: blank_len 1000, seq_len 10, n_classes 10,
    n_train 10000, n_test 1000, batch 32, RMSprop 5e-4, clip 1.0, 50 epochs over
    range(0, 10000, 32); utils.py: symbols 1..8; the paper reports the loss (Table 1, ~16K)."""
    c = preset("tcn_copy", "cell=lstm_plain")
    t = c["task"]
    assert (t["seq_len"], t["copy_len"], t["n_symbols"], t["n_classes"]) == (1000, 10, 8, 10)
    assert (t["train_size"], t["test_size"], t["batch_size"], t["train_order"]) == (10000, 1000, 32, "in_order")
    assert t["metric"] == "loss" and t["solved_threshold"] is None
    assert (c["optim"]["name"], c["optim"]["lr"], c["optim"]["alpha"], c["optim"]["grad_clip"]) == (
        "rmsprop", 5e-4, 0.99, 1.0)
    assert c["trainer"]["val_check_interval"] == 313 and c["trainer"]["max_steps"] == 50 * 313
    assert c["trainer"]["test_checkpoint"] == "last" and c["model"]["param_budget"] == 16000
    assert any("zero_grad" in d for d in c["deviations"]) and any("scalar channel" in d for d in c["deviations"])


def test_indrnn_adding_follows_adding_py():
    """Sunnydreamrain/IndRNN_Theano_Lasagne adding/adding.py: 128 units, 2 layers, relu, batch 32,
    Adam 2e-4, W_in ~ Normal(0.001), u ~ U(0, 2^(1/T)) then U(2^(-1/T), 2^(1/T)), |u| <= 2^(1/T),
    lr / 10 after every 201 tests of 100 batches until it falls below 1e-6."""
    c = preset("indrnn_adding", "task.seq_len=500")
    cell, optim = c["cell"], c["optim"]
    assert (cell["hidden_size"], cell["num_layers"], cell["nonlinearity"]) == (128, 2, "relu")
    assert (cell["recurrent_init"], cell["input_init"], cell["input_std"]) == ("last_layer_long", "normal", 0.001)
    assert (c["task"]["batch_size"], c["task"]["placement"]) == (32, "halves")
    assert (optim["lr"], optim["schedule"], optim["step_size"], optim["gamma"]) == (2e-4, "step", 20100, 0.1)
    lr, decays = 2e-4, 0
    while lr >= 1e-6:  # the script's loop: decay, stop below 1e-6
        lr, decays = lr * 0.1, decays + 1
    assert c["trainer"]["max_steps"] == decays * 20100 == 60300
    stack = build_experiment(compose_config(["experiment=indrnn_adding", "task.seq_len=500", "cell.hidden_size=500",
                                             "trainer.accelerator=cpu"])).stack
    first, last = (cell.weight_hh.detach() for cell in stack.cells)
    bound = 2 ** (1 / 500)
    assert float(first.min()) >= 0 and float(first.max()) <= bound
    assert float(last.min()) >= 0.5 ** (1 / 500) and float(last.max()) <= bound
    assert all(cell.max_len == 500 for cell in stack.cells)
    assert abs(float(stack.cells[0].weight_ih.detach().std()) - 0.001) < 2e-4
    assert any("grad_clipping" in d for d in c["deviations"])


def test_urnn_copy_states_what_the_paper_does_not():
    """Arjovsky, Shah & Bengio 2016, section 4.1: RMSprop lr 1e-3, decay 0.9, batch 20, LSTM of
    40 units, 10 symbols from 8, T in {100, 200, 300, 500}; iterations, clipping and the LSTM's
    initialisation are not in the paper, and the preset says so."""
    c = compose_config(["experiment=urnn_copy"], resolved=False, hydra=True)
    assert c.hydra.sweeper.params["task.seq_len"] == "100,200,300,500"
    c = preset("urnn_copy")
    assert (c["optim"]["name"], c["optim"]["lr"], c["optim"]["alpha"], c["task"]["batch_size"]) == (
        "rmsprop", 1e-3, 0.9, 20)
    assert (c["cell"]["name"], c["cell"]["hidden_size"], c["task"]["copy_len"], c["task"]["n_symbols"]) == (
        "lstm", 40, 10, 8)
    assert len(c["deviations"]) == 4


@pytest.mark.parametrize("name", ["tcn_adding", "tcn_copy"])
def test_in_order_training_set_reads_every_sequence_once_per_epoch(name):
    task = build_experiment(preset(name, "cell=gru", "task.seq_len=20", "model.param_budget=null",
                                   "cell.hidden_size=4")).task
    sizes = [len(batch[0]) for batch in task.train_dataloader(0)]
    assert sizes[:-1] == [32] * (len(sizes) - 1) and sum(sizes) == task.train_size
    assert sizes[-1] == task.train_size % 32  # the last partial batch: 16 in both scripts
