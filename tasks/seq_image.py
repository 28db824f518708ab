"""Sequential image classification (registry name ``seq_image``): read an image one
pixel or one row at a time, then name its class.

Le, Jaitly & Hinton 2015 ("A Simple Way to Initialize Recurrent Networks of
Rectified Linear Units", arXiv:1504.00941) introduced pixel-by-pixel MNIST and its
permuted variant as long-range memory benchmarks; Bai, Kolter & Koltun 2018 (TCN,
locuslab/TCN ``TCN/mnist_pixel/pmnist_test.py``) use the same setting. Data:
:mod:`rnnbench.image_data` (``mnist``, ``fashion_mnist``).

``mode`` turns a 28 x 28 image into a sequence:

- ``pixel``: T = 784 steps of 1 input, the pixels in row-major order (left to right,
  top to bottom);
- ``row``: T = 28 steps of 28 inputs, one row per step;
- ``permuted``: T = 784 steps of 1 input, the pixels in one fixed random order drawn
  from ``permutation_seed`` (the same permutation for every image, every split and
  every run with that seed; independent of ``seed``/``data_seed``). pmnist_test.py
  draws it with an unseeded ``np.random.permutation``, so its order is not
  reproducible; ours is.

Pixels are scaled to [0, 1] and, with ``normalize``, standardised by the mean and
standard deviation of all pixels of the 60,000 official training images (for MNIST
these are pmnist_test.py's constants 0.1307 and 0.3081).

Splits: the official 10,000 test images for test; ``val_size`` of the 60,000
training images held out for validation by a draw from ``split_seed`` (pmnist_test.py
has no validation set and reports the test set; here the checkpoint is chosen on
validation); ``train_subset`` keeps only that many of the remaining training images
(a fixed random subset, for CPU-sized runs).

Model: ``pixels -> cell stack -> linear head`` on the stack's output after the whole
image: the last step of the forward direction and, for a bidirectional stack, the
first step of the backward one (each direction's summary of the whole sequence).
Loss: cross-entropy; metrics ``acc`` (the primary one) and ``loss``, means over images.

Training batches: every epoch a permutation of the training images drawn from
``(data_seed, epoch)``, cut into full batches (``rnnbench.fixed_data.EpochStream``:
batch k is a function of the seeds and k, ranks read disjoint batches).

Baseline: always answer the most frequent class of the training part (its test
accuracy: 0.1135 on MNIST, whose test set has 1,135 ones; exactly 0.1 on the balanced
Fashion-MNIST), and the cross-entropy of the (add-one smoothed) training class frequencies.

Not causal: the class is predicted after the whole image has been read, so a
bidirectional stack sees nothing hidden from it and is a legitimate baseline.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from rnnbench.errors import check, is_int
from rnnbench.fixed_data import EpochStream, EvalBatches
from rnnbench.image_data import IMAGE_SETS, IMAGE_SIDE, TRAIN_IMAGES, ImageData, load_images
from rnnbench.registry import register_task
from rnnbench.task import TRAIN_STREAM, VAL_STREAM, Task, seeded_generator

MODES = ("pixel", "row", "permuted")


class SequenceClassifier(nn.Module):
    """``stack -> linear head`` on each direction's output after reading the whole sequence."""

    def __init__(self, make_stack, input_size: int, num_classes: int):
        super().__init__()
        self.stack = make_stack(input_size)
        self.head = nn.Linear(self.stack.output_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.stack(x)  # (B, T, directions * H): forward half, then backward half
        hidden = self.stack.hidden_size
        summary = y[:, -1] if not self.stack.bidirectional else torch.cat([y[:, -1, :hidden], y[:, 0, hidden:]], -1)
        return self.head(summary)


@register_task("seq_image")
class SeqImageTask(Task):
    causal = False  # the class is read after the whole image: a backward direction hides nothing
    metric = "acc"
    metric_mode = "max"

    def __init__(
        self,
        *,
        dataset: str = "mnist",
        mode: str = "pixel",
        data_dir: Optional[str] = None,
        permutation_seed: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        train_subset: Optional[int] = None,
        normalize: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        solved_threshold: Optional[float] = None,
    ):
        super().__init__(batch_size=batch_size, solved_threshold=solved_threshold)
        check(dataset in IMAGE_SETS, "task.dataset", dataset, f"one of {', '.join(IMAGE_SETS)}")
        check(mode in MODES, "task.mode", mode, f"one of {', '.join(MODES)}")
        check(data_dir is None or isinstance(data_dir, str), "task.data_dir", data_dir,
              "null (RNNBENCH_DATA_DIR, then the cache, then a download) or a folder path")
        check(is_int(permutation_seed) and permutation_seed >= 0, "task.permutation_seed", permutation_seed,
              "an integer >= 0")
        check(is_int(val_size) and 1 <= val_size <= TRAIN_IMAGES - batch_size, "task.val_size", val_size,
              f"an integer in [1, {TRAIN_IMAGES - batch_size}] (held out of the 60,000 training images)")
        check(is_int(split_seed) and split_seed >= 0, "task.split_seed", split_seed, "an integer >= 0")
        check(train_subset is None or (is_int(train_subset) and batch_size <= train_subset <= TRAIN_IMAGES - val_size),
              "task.train_subset", train_subset,
              f"null (all {TRAIN_IMAGES - val_size} training images) or an integer in "
              f"[task.batch_size, {TRAIN_IMAGES - val_size}]")
        check(isinstance(normalize, bool), "task.normalize", normalize, "true or false")
        check(is_int(eval_batch_size) and eval_batch_size >= 1, "task.eval_batch_size", eval_batch_size,
              "an integer >= 1")
        self.dataset = dataset
        self.mode = mode
        self.data_dir = data_dir
        self.permutation_seed = permutation_seed
        self.val_size = val_size
        self.split_seed = split_seed
        self.train_subset = train_subset
        self.normalize = normalize
        self.eval_batch_size = eval_batch_size
        self.num_classes = len(IMAGE_SETS[dataset].classes)

    # --- shapes ---------------------------------------------------------------------------
    @property
    def sequence_length(self) -> int:
        return IMAGE_SIDE if self.mode == "row" else IMAGE_SIDE * IMAGE_SIDE

    @property
    def input_size(self) -> int:
        return IMAGE_SIDE if self.mode == "row" else 1

    @functools.cached_property
    def permutation(self) -> Optional[Tensor]:
        if self.mode != "permuted":
            return None
        return torch.randperm(IMAGE_SIDE * IMAGE_SIDE, generator=seeded_generator(self.permutation_seed))

    # --- data -----------------------------------------------------------------------------
    @functools.cached_property
    def data(self) -> ImageData:
        return load_images(self.dataset, self.data_dir)

    @functools.cached_property
    def splits(self) -> dict[str, Tensor]:
        """Indices of the training and validation images (into the official training part);
        the test part is used whole."""
        order = torch.randperm(TRAIN_IMAGES, generator=seeded_generator(self.split_seed, VAL_STREAM))
        train = order[self.val_size:]
        if self.train_subset is not None:
            train = train[:self.train_subset]
        return {"train": train, "valid": order[:self.val_size], "test": torch.arange(len(self.data.test_labels))}

    @functools.cached_property
    def pixel_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of every pixel of the official training images, in [0, 1] units."""
        counts = torch.bincount(self.data.train_images.flatten(), minlength=256).double()  # a histogram, not 47M floats
        values = torch.arange(256, dtype=torch.float64) / 255
        mean = float((counts * values).sum() / counts.sum())
        variance = float((counts * (values - mean) ** 2).sum() / (counts.sum() - 1))
        return mean, variance ** 0.5

    def sequences(self, images: Tensor) -> Tensor:
        """uint8 images ``(B, 28, 28)`` -> float sequences ``(B, T, input_size)`` as the mode reads them."""
        x = images.float() / 255
        if self.normalize:
            mean, std = self.pixel_stats
            x = (x - mean) / std
        x = x.reshape(len(images), self.sequence_length, self.input_size)
        return x if self.permutation is None else x[:, self.permutation]

    def _make_batch(self, split: str):
        images, labels = ((self.data.test_images, self.data.test_labels) if split == "test"
                          else (self.data.train_images, self.data.train_labels))
        return lambda indices: (self.sequences(images[indices]), labels[indices])

    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        train = self.splits["train"]

        def epoch_batches(epoch: int) -> list[Tensor]:
            order = train[torch.randperm(len(train), generator=seeded_generator(data_seed, TRAIN_STREAM, epoch))]
            full = len(order) // self.batch_size * self.batch_size  # full batches only
            return list(order[:full].split(self.batch_size))

        stream = EpochStream(epoch_batches, self._make_batch("train"), rank, world_size, start_step, num_batches)
        return DataLoader(stream, batch_size=None)

    def _eval_loader(self, split: str) -> DataLoader:
        batches = list(self.splits[split].split(self.eval_batch_size))
        return DataLoader(EvalBatches(batches, self._make_batch(split)), batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._eval_loader("valid")

    def test_dataloader(self, data_seed: int):
        return self._eval_loader("test")

    # --- record -----------------------------------------------------------------------------
    def key_parameters(self) -> dict:
        params = {"dataset": self.dataset, "mode": self.mode, "seq_len": self.sequence_length,
                  "input_size": self.input_size, "train_size": len(self.splits["train"]), "val_size": self.val_size,
                  "test_size": len(self.splits["test"]), "split_seed": self.split_seed}
        if self.mode == "permuted":
            params["permutation_seed"] = self.permutation_seed
        return params

    def baseline(self) -> dict[str, float]:
        """On the test set: ``acc`` of always answering the training part's most frequent class
        (the lowest class number among equals), ``loss`` the cross-entropy of the training class
        frequencies (add-one smoothed, so that a small ``train_subset`` missing a class stays finite)."""
        counts = torch.bincount(self.data.train_labels[self.splits["train"]], minlength=self.num_classes).double()
        majority = int(counts.argmax())
        test_labels = self.data.test_labels
        log_prior = ((counts + 1) / (counts.sum() + self.num_classes)).log()
        return {"acc": float((test_labels == majority).double().mean()), "loss": float(-log_prior[test_labels].mean()),
                "majority_class": majority}

    # --- model, loss, metrics ---------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceClassifier:
        return SequenceClassifier(make_stack, self.input_size, self.num_classes)

    def loss_and_metrics(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, labels = batch
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "acc": accuracy}

    def count_tokens(self, batch) -> int:
        return batch[0].shape[0] * batch[0].shape[1]
