"""Sequential image classification: IDX decoding and checksums on the real Fashion-MNIST
files, the offline error, the three reading modes, the split, the majority-class
baseline against an independent count, the bidirectional readout, training batches."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import inspect
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers.cli import TINY, run_cli, summaries
from helpers.data import shared_data
from rnnbench import image_data
from rnnbench.download import DataError
from rnnbench.errors import ConfigError
from rnnbench.registry import CELLS, get_task
from rnnbench.stack import CellStack
from rnnbench.tasks.seq_image import SeqImageTask, SequenceClassifier

CONF = Path(__file__).resolve().parents[1] / "conf" / "task" / "seq_image.yaml"
DATA = shared_data("fashion-mnist/train-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(DATA is None, reason="the shared fashion-mnist/*.gz files are not here "
                                                     "(set RNNBENCH_DATA_DIR to a folder holding them)")
FASHION = image_data.IMAGE_SETS["fashion_mnist"]


@pytest.fixture(scope="module")
def fashion():
    return SeqImageTask(dataset="fashion_mnist") if DATA is not None else None


def test_registered_and_yaml_lists_every_constructor_kwarg_with_its_default():
    assert get_task("seq_image") is SeqImageTask
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    assert cfg.pop("name") == "seq_image"
    defaults = {k: p.default for k, p in inspect.signature(SeqImageTask.__init__).parameters.items() if k != "self"}
    assert cfg == defaults


def test_idx_decoding():
    images = bytes(range(24))
    content = struct.pack(">iiii", 0x0803, 2, 3, 4) + images
    assert image_data.decode_idx(content, "x", 3).tolist() == torch.arange(24).view(2, 3, 4).tolist()
    with pytest.raises(DataError, match="magic"):
        image_data.decode_idx(content, "x", 1)
    with pytest.raises(DataError, match=r"announces shape \(2, 3, 4\)"):
        image_data.decode_idx(content[:-1], "x", 3)


@needs_data
def test_fashion_files_decode_to_the_published_set(fashion):
    data = fashion.data
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == torch.uint8
    # Published facts of Fashion-MNIST: 6,000 / 1,000 images per class, the first labels of the
    # training file (ankle boot, T-shirt, T-shirt, dress ...), pixel mean and std 0.2860 / 0.3530.
    assert data.train_labels.bincount().tolist() == [6000] * 10 and data.test_labels.bincount().tolist() == [1000] * 10
    assert data.train_labels[:6].tolist() == [9, 0, 0, 3, 0, 2]
    assert fashion.pixel_stats == pytest.approx((0.2860, 0.3530), abs=1e-4)


@needs_data
def test_the_shared_recompressed_files_pass_by_their_content_and_corrupt_ones_are_refused(tmp_path):
    spec = FASHION.files["test_labels"]
    shared = DATA / "fashion-mnist" / spec.name
    assert hashlib.md5(shared.read_bytes()).hexdigest() != spec.gz_md5  # not the published archive's bytes...
    content = image_data.idx_content(shared, spec)  # ...but its content
    corrupt = bytearray(content)
    corrupt[100] ^= 1
    bad = tmp_path / spec.name
    bad.write_bytes(gzip.compress(bytes(corrupt)))
    with pytest.raises(DataError, match=f"{bad} was refused: .*decompressed content"):
        image_data.idx_content(bad, spec)
    bad.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not a gzip file"):
        image_data.idx_content(bad, spec)


def use_server(monkeypatch, tmp_path, url: str) -> None:
    """Data dir and cache in ``tmp_path``; Fashion-MNIST 'published' at ``url``."""
    monkeypatch.setenv("RNNBENCH_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(image_data.IMAGE_SETS, "fashion_mnist", dataclasses.replace(FASHION, url=url))


def test_offline_error_names_the_file_and_the_option(tmp_path, monkeypatch):
    use_server(monkeypatch, tmp_path, (tmp_path / "offline").as_uri() + "/")
    with pytest.raises(DataError, match=r"fashion-mnist/train-images-idx3-ubyte.gz not found .*task.data_dir="):
        SeqImageTask(dataset="fashion_mnist").data


@needs_data
def test_download_is_checked_and_a_bad_one_is_removed_from_the_cache(tmp_path, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    for spec in FASHION.files.values():
        shutil.copyfile(DATA / "fashion-mnist" / spec.name, server / spec.name)
    use_server(monkeypatch, tmp_path, server.as_uri() + "/")
    assert SeqImageTask(dataset="fashion_mnist").data.test_labels.shape == (10000,)
    (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    (server / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 4))
    with pytest.raises(DataError, match="was refused"):
        SeqImageTask(dataset="fashion_mnist").data
    assert not (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


# --- modes, split, baseline -----------------------------------------------------------------------------
@needs_data
def test_modes_read_the_pixels_in_their_order(fashion):
    images = fashion.data.test_images[:3]
    tasks = {mode: SeqImageTask(dataset="fashion_mnist", mode=mode, normalize=False) for mode in ("pixel", "row",
                                                                                                   "permuted")}
    for task in tasks.values():
        task.data = fashion.data  # share the decoded files
    pixel, row, permuted = (tasks[m].sequences(images) for m in ("pixel", "row", "permuted"))
    assert pixel.shape == (3, 784, 1) and row.shape == (3, 28, 28) and permuted.shape == (3, 784, 1)
    assert torch.equal(pixel[1, 28 * 5 + 7, 0], images[1, 5, 7].float() / 255)  # row-major order
    assert torch.equal(row[1, 5], images[1, 5].float() / 255)
    order = tasks["permuted"].permutation
    assert sorted(order.tolist()) == list(range(784)) and not torch.equal(order, torch.arange(784))
    assert torch.equal(permuted[:, :, 0], pixel[:, order, 0])
    assert torch.equal(SeqImageTask(mode="permuted").permutation, order)  # fixed by permutation_seed only
    assert not torch.equal(SeqImageTask(mode="permuted", permutation_seed=1).permutation, order)


@needs_data
def test_validation_is_held_out_of_training_by_a_seeded_draw(fashion):
    splits = fashion.splits
    assert len(splits["valid"]) == 5000 and len(splits["train"]) == 55000
    assert sorted(torch.cat([splits["train"], splits["valid"]]).tolist()) == list(range(60000))
    assert torch.equal(SeqImageTask(dataset="fashion_mnist").splits["valid"], splits["valid"])
    other = SeqImageTask(dataset="fashion_mnist", split_seed=1)
    other.data = fashion.data
    assert not torch.equal(other.splits["valid"], splits["valid"])
    subset = SeqImageTask(dataset="fashion_mnist", train_subset=1000)
    subset.data = fashion.data
    assert torch.equal(subset.splits["train"], splits["train"][:1000]) and subset.key_parameters()["train_size"] == 1000


@needs_data
def test_majority_baseline_matches_an_independent_count_and_a_constant_model_scores_it(fashion):
    train = fashion.data.train_labels[fashion.splits["train"]].tolist()
    counts = collections.Counter(train)
    majority = min(c for c in counts if counts[c] == max(counts.values()))
    prior = {c: (counts[c] + 1) / (len(train) + 10) for c in range(10)}
    test = fashion.data.test_labels.tolist()
    baseline = fashion.baseline()
    assert baseline["majority_class"] == majority
    assert baseline["acc"] == pytest.approx(test.count(majority) / len(test))
    assert baseline["loss"] == pytest.approx(-sum(math.log(prior[y]) for y in test) / len(test))

    class Prior(nn.Module):
        def forward(self, inputs):
            return torch.tensor([math.log(prior[c]) for c in range(10)]).expand(len(inputs), -1)

    task = SeqImageTask(dataset="fashion_mnist", mode="row", eval_batch_size=3000)  # 3 x 3000 + 1000: uneven
    task.data = fashion.data
    total = {"acc": 0.0, "loss": 0.0}
    for batch in task.test_dataloader(0):
        _, metrics = task.loss_and_metrics(Prior(), batch)
        for name in total:
            total[name] += float(metrics[name]) * task.metric_weight(batch) / 10000
    assert total["acc"] == pytest.approx(baseline["acc"]) and total["loss"] == pytest.approx(baseline["loss"])


def test_bidirectional_readout_takes_each_direction_after_the_whole_sequence():
    torch.manual_seed(0)
    model = SequenceClassifier(lambda n: CellStack(CELLS.get("gru"), n, 5, bidirectional=True), 3, 4)
    x = torch.randn(2, 6, 3)
    y, _ = model.stack(x)
    expected = model.head(torch.cat([y[:, -1, :5], y[:, 0, 5:]], -1))
    assert torch.allclose(model(x), expected)
    x2 = x.clone()
    x2[:, 0] += 1.0  # the first input reaches the backward summary at step 0, and the forward one at the end
    assert not torch.allclose(model(x2), model(x))


def test_bad_options_are_refused_before_training():
    with pytest.raises(ConfigError, match="task.mode='column' is invalid"):
        SeqImageTask(mode="column")
    with pytest.raises(ConfigError, match="task.train_subset=10 is invalid"):
        SeqImageTask(train_subset=10)
    with pytest.raises(ConfigError, match="task.dataset='cifar' is invalid"):
        SeqImageTask(dataset="cifar")


@needs_data
def test_training_batches_are_reproducible_resumable_and_split_between_ranks(fashion):
    task = SeqImageTask(dataset="fashion_mnist", mode="row", train_subset=640, batch_size=64)
    task.data = fashion.data
    labels = [b[1].tolist() for b in task.train_dataloader(0, num_batches=15)]  # 10 batches per epoch
    images = [b[0] for b in task.train_dataloader(0, num_batches=15)]
    assert labels == [b[1].tolist() for b in task.train_dataloader(0, num_batches=15)]
    assert all(torch.equal(a, b[0]) for a, b in zip(images[12:], task.train_dataloader(0, start_step=12,
                                                                                          num_batches=3)))
    assert not torch.equal(images[0], next(iter(task.train_dataloader(1, num_batches=1)))[0])
    epoch = torch.cat([b.flatten(1) for b in images[:10]])
    assert len(torch.unique(epoch, dim=0)) == 640  # each training image once per epoch
    shares = [torch.cat([b[0].flatten(1) for b in task.train_dataloader(0, r, 2, num_batches=5)]) for r in (0, 1)]
    assert len(torch.unique(torch.cat(shares), dim=0)) == 640  # two ranks: disjoint halves of the epoch


@needs_data
@pytest.mark.slow
def test_cli_row_by_row_with_a_bidirectional_cell_and_diagnostics(workdir):
    tiny = [a for a in TINY if not a.startswith(("task.seq_len", "task.val_size", "task.test_size"))]
    args = ["task=seq_image", "task.dataset=fashion_mnist", "task.mode=row", "task.train_subset=2000",
            "task.val_size=500", "cell=bigru", *tiny, "diagnostics=true", "trainer.threads=1"]
    proc = run_cli(args, workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = summaries(workdir / "results")[0]
    assert record["status"] == "finished" and record["baseline"]["acc"] == 0.1
    assert record["task_params"]["seq_len"] == 28 and record["diagnostics"] == "diagnostics.json"
    assert record["metrics"]["test"]["acc"] > 0.2  # 20 steps of 16 images already beat chance
