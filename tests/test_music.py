"""The polyphonic music task: .mat and pickle readers on the real files, the offline
error, the baselines against an independent computation, masking and weighting of
the per-frame NLL, training batches (reproducible, resumable, split between ranks)."""

from __future__ import annotations

import inspect
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers.cli import TINY, run_cli, summaries
from helpers.data import shared_data
from rnnbench import fixed_data, music_data
from rnnbench.download import DataError
from rnnbench.registry import CELLS, get_task
from rnnbench.stack import CellStack
from rnnbench.tasks.music import MusicTask, pad_pieces

CONF = Path(__file__).resolve().parents[1] / "conf" / "task" / "music.yaml"
DATA = shared_data("poly_music/JSB_Chorales.mat")
needs_data = pytest.mark.skipif(DATA is None, reason="the shared poly_music/*.mat files are not here "
                                                     "(set RNNBENCH_DATA_DIR to a folder holding them)")
# Official split sizes (pieces), as published with the sets and in the shared data README.
PIECES = {"jsb": (229, 76, 77), "nottingham": (694, 173, 170), "musedata": (524, 135, 124), "piano": (87, 12, 25)}


def test_registered_and_yaml_lists_every_constructor_kwarg_with_its_default():
    assert get_task("music") is MusicTask
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    assert cfg.pop("name") == "music"
    defaults = {k: p.default for k, p in inspect.signature(MusicTask.__init__).parameters.items() if k != "self"}
    assert cfg == defaults


@needs_data
@pytest.mark.parametrize("dataset", sorted(PIECES))
def test_mat_files_have_the_official_splits_of_88_key_rolls(dataset):
    from scipy.io import loadmat

    rolls = music_data.load_rolls(dataset)
    assert tuple(len(rolls[s]) for s in ("train", "valid", "test")) == PIECES[dataset]
    raw = loadmat(DATA / "poly_music" / music_data.MUSIC_SETS[dataset].file)["testdata"][0]
    for piece, reference in zip(rolls["test"], raw):
        assert piece.dtype == torch.uint8 and piece.shape[1] == 88
        assert np.array_equal(piece.numpy(), reference)


def as_note_lists(roll: torch.Tensor) -> list[list[int]]:
    """A roll back to the original distribution's form: MIDI notes per step (numpy, not our code)."""
    array = roll.numpy()
    return [[int(k) + 21 for k in np.flatnonzero(step)] for step in array]


@needs_data
def test_original_pickle_format_gives_the_same_rolls(tmp_path):
    rolls = music_data.load_rolls("jsb")
    original = {split: [as_note_lists(p) for p in pieces] for split, pieces in rolls.items()}
    path = tmp_path / "JSB Chorales.pickle"
    path.write_bytes(pickle.dumps(original, protocol=2))  # the Python 2 era protocol
    task = MusicTask(path=str(path))
    for split in ("train", "valid", "test"):
        assert all(torch.equal(a, b) for a, b in zip(task.rolls[split], rolls[split]))
        assert len(task.rolls[split]) == len(rolls[split])


def test_notes_map_to_keys_and_silence_is_an_empty_step():
    roll = music_data.notes_to_roll([[21, 60], [], [108]])
    assert roll.shape == (3, 88) and roll.sum() == 3
    assert roll[0, 0] == 1 and roll[0, 39] == 1 and roll[2, 87] == 1 and roll[1].sum() == 0


@pytest.mark.parametrize("note", [20, 109, 60.5])
def test_a_note_off_the_keyboard_is_refused(note):
    with pytest.raises(DataError, match=f"note {note}"):
        music_data.notes_to_roll([[60], [note]], "x.pickle: train[0]")


def test_a_pickle_holding_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "evil.pickle"

    class Boom:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path.write_bytes(pickle.dumps({"train": [Boom()], "valid": [], "test": []}))
    with pytest.raises(DataError, match="only dicts, lists and numbers"):
        music_data.read_pickle(path)
    assert (tmp_path / "victim").is_dir()


def test_offline_error_names_the_file_and_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNBENCH_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(music_data, "_TCN_URL", (tmp_path / "offline").as_uri() + "/")
    with pytest.raises(DataError, match=r"poly_music/Nottingham.mat not found .*task.data_dir=/path/to/data"):
        MusicTask(dataset="nottingham").rolls


@needs_data
def test_download_is_checked_and_cached(tmp_path, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    shutil.copyfile(DATA / "poly_music" / "JSB_Chorales.mat", server / "JSB_Chorales.mat")
    monkeypatch.setenv("RNNBENCH_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(music_data, "_TCN_URL", server.as_uri() + "/")
    assert len(MusicTask().rolls["train"]) == 229
    assert (tmp_path / "cache" / "poly_music" / "JSB_Chorales.mat").is_file()
    (server / "Piano_midi.mat").write_bytes(b"not the published file")
    with pytest.raises(DataError, match="SHA-256"):
        MusicTask(dataset="piano").rolls


# --- baselines, metric ------------------------------------------------------------------------------
def reference_baselines(dataset: str) -> tuple[float, float]:
    """Marginal and Markov NLL per scored frame, straight from loadmat with numpy loops over pieces."""
    from scipy.io import loadmat

    data = loadmat(DATA / "poly_music" / music_data.MUSIC_SETS[dataset].file)
    train = [p.astype(float) for p in data["traindata"][0]]
    test = [p.astype(float) for p in data["testdata"][0]]
    p = (sum(x.sum(0) for x in train) + 1) / (sum(len(x) for x in train) + 2)
    counts = np.zeros((2, 2, 88))  # [previous, current, key]
    for x in train:
        for t in range(1, len(x)):
            counts[x[t - 1].astype(int), x[t].astype(int), np.arange(88)] += 1
    on = (counts[:, 1] + 1) / (counts.sum(1) + 2)  # [previous, key]
    marginal = markov = frames = 0.0
    for x in test:
        for t in range(1, len(x)):
            q = on[x[t - 1].astype(int), np.arange(88)]
            marginal -= np.sum(x[t] * np.log(p) + (1 - x[t]) * np.log(1 - p))
            markov -= np.sum(x[t] * np.log(q) + (1 - x[t]) * np.log(1 - q))
            frames += 1
    return marginal / frames, markov / frames


@needs_data
def test_baselines_match_an_independent_computation():
    marginal, markov = reference_baselines("jsb")
    baseline = MusicTask().baseline()
    assert baseline["nll"] == pytest.approx(marginal, rel=1e-12)
    assert baseline["markov_nll"] == pytest.approx(markov, rel=1e-12)
    assert 0 < baseline["markov_nll"] < baseline["nll"] < 88 * math.log(2)


class ConstantModel(nn.Module):
    """Logits ``logit(p)`` at every step, whatever the input."""

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.logit = (p / (1 - p)).log().float()

    def forward(self, inputs, lengths):
        return self.logit.expand(*inputs.shape[:2], -1)


def split_mean(task: MusicTask, model: nn.Module, loader) -> float:
    """The epoch mean as the trainer forms it: batch values weighted by ``metric_weight``."""
    total = weight = 0.0
    for batch in loader:
        _, metrics = task.loss_and_metrics(model, batch)
        total += float(metrics["nll"]) * task.metric_weight(batch)
        weight += task.metric_weight(batch)
    return total / weight


@needs_data
@pytest.mark.parametrize("eval_batch_size", [1, 7, 64])
def test_marginal_model_scores_the_baseline_whatever_the_padding(eval_batch_size):
    task = MusicTask(eval_batch_size=eval_batch_size)
    frames = torch.cat(task.rolls["train"]).double()
    model = ConstantModel((frames.sum(0) + 1) / (frames.shape[0] + 2))
    assert split_mean(task, model, task.test_dataloader(0)) == pytest.approx(task.baseline()["nll"], rel=1e-5)
    scored = sum(len(p) - 1 for p in task.rolls["test"])
    assert sum(task.metric_weight(b) for b in task.test_dataloader(0)) == scored == task.key_parameters()["test_frames"]


def test_padding_changes_no_piece_score():
    torch.manual_seed(0)
    short, long = (torch.rand(n, 88).lt(0.05).to(torch.uint8) for n in (5, 12))
    model = MusicTask().build_model(lambda n: CellStack(CELLS.get("gru"), n, 8))
    task = MusicTask()
    alone = [float(task.loss_and_metrics(model, pad_pieces([p]))[1]["nll"]) * (len(p) - 1) for p in (short, long)]
    together = float(task.loss_and_metrics(model, pad_pieces([short, long]))[1]["nll"]) * (4 + 11)
    assert together == pytest.approx(sum(alone), rel=1e-5)


# --- training batches ------------------------------------------------------------------------------
def pieces_of(batch) -> list[bytes]:
    """Each real piece of a batch, as bytes (its first frame + all targets), to compare batches."""
    inputs, targets, lengths = batch
    return [torch.cat([inputs[i, :1], targets[i, :n]]).to(torch.uint8).numpy().tobytes()
            for i, n in enumerate(lengths.tolist())]


@needs_data
def test_training_batches_are_reproducible_resumable_and_split_between_ranks():
    task = MusicTask(batch_size=8)
    first = [pieces_of(b) for b in task.train_dataloader(3, num_batches=40)]  # 40 > 29 batches: into epoch 2
    assert first == [pieces_of(b) for b in task.train_dataloader(3, num_batches=40)]
    assert first != [pieces_of(b) for b in task.train_dataloader(4, num_batches=40)]
    assert first[31:] == [pieces_of(b) for b in task.train_dataloader(3, start_step=31, num_batches=9)]
    epoch = [piece for batch in first[:29] for piece in batch]  # epoch 0: ceil(229 / 8) = 29 batches
    assert len(epoch) == len(set(epoch)) == 229  # one epoch: every training piece once
    ranks = [[p for b in task.train_dataloader(3, rank=r, world_size=2, num_batches=14) for p in pieces_of(b)]
             for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])


@pytest.mark.parametrize("batches, world_size", [(5, 2), (1, 2), (4, 4)])
def test_eval_batches_are_shared_out_between_ranks_once_each(monkeypatch, batches, world_size):
    shares = []
    for rank in range(world_size):
        monkeypatch.setattr(fixed_data, "process_rank", lambda rank=rank: (rank, world_size))
        shares.append(list(fixed_data.EvalBatches(range(batches), lambda i: i)))
    if batches < world_size:
        assert all(share == list(range(batches)) for share in shares)  # too few to share: all on every rank
    else:
        assert sorted(i for share in shares for i in share) == list(range(batches))


@needs_data
def test_diagnostic_batch_has_no_padding():
    inputs, targets, lengths = MusicTask().diagnostic_batch(0, 256)
    assert inputs.shape[0] == 77 and bool((lengths == inputs.shape[1]).all())


@needs_data
@pytest.mark.slow
def test_cli_run_with_diagnostics(workdir):
    tiny = [a for a in TINY if not a.startswith(("task.seq_len", "task.val_size", "task.test_size"))]
    proc = run_cli(["task=music", "cell=lstm", *tiny, "diagnostics=true", "trainer.threads=1"], workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = summaries(workdir / "results")[0]
    assert record["status"] == "finished" and record["baseline"]["nll"] > 10
    assert math.isfinite(record["metrics"]["test"]["nll"]) and record["task_params"]["test_frames"] == 4648
    assert record["diagnostics"] == "diagnostics.json"


@needs_data
@pytest.mark.slow
def test_ddp_ranks_share_the_evaluation_and_score_as_one_process(workdir):
    """With a learning rate too small to move the weights, two DDP processes (each scoring its
    share of the test batches) and one process must report the same test NLL: no piece is
    dropped or counted twice, and frames are weighed across ranks."""
    tiny = [a for a in TINY if not a.startswith(("task.seq_len", "task.val_size", "task.test_size"))]
    args = ["task=music", *tiny, "task.eval_batch_size=5", "optim.lr=1e-12", "trainer.threads=1"]
    scores = []
    for trainer in ("trainer=ddp_cpu", "trainer=cpu"):
        proc = run_cli([*args, trainer, f"results_dir={trainer[8:]}"], workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (record,) = summaries(workdir / trainer[8:])
        scores.append(record["metrics"]["test"]["nll"])
        assert record["steps"] == 20 and record["world_size"] == (2 if trainer.endswith("ddp_cpu") else 1)
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)
