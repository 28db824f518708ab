"""MNIST and Fashion-MNIST in the IDX format: files, checksums, decoding.

Both sets are four gzipped IDX files, 60,000 training and 10,000 test images of
28 x 28 grey bytes, and their labels 0..9 (LeCun et al. 1998; Xiao, Rasul &
Vollgraf 2017, arXiv:1708.07747). IDX: a big-endian header (magic ``0x0000080D``
with D the number of dimensions, then D int32 sizes), then the unsigned bytes.

Files are found as ``<folder>/<file>`` (``mnist/train-images-idx3-ubyte.gz``,
``fashion-mnist/...``) through :func:`rnnbench.download.corpus_file`: ``task.data_dir``
-> ``RNNBENCH_DATA_DIR`` -> the cache -> a download. Every file, wherever it was found,
must then be one of two things, or loading stops with an error naming it:

- the published archive, byte for byte (its MD5, as published by the dataset's
  authors and used by torchvision); or
- any gzip of the published content (the MD5 of the decompressed IDX bytes): e.g.
  Debian's re-compressed Fashion-MNIST, whose ``.gz`` bytes differ.

MNIST is downloaded from torchvision's mirror of Yann LeCun's files (the original
host refuses many automated downloads) and checked against the SHA-256 of the
published archives as well; Fashion-MNIST from Zalando's own location. The MD5s of
the decompressed MNIST images are not listed here (not taken on the offline machine
this was written on): a re-compressed MNIST image file is refused, the published
one is accepted.

Decoding is one ``numpy.frombuffer`` per file (no per-pixel Python): the whole
training set decodes in well under a second, so nothing is cached.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .download import DataError, corpus_file, default_cache_dir


@dataclass(frozen=True)
class IdxFile:
    name: str                   # file name, e.g. "train-images-idx3-ubyte.gz"
    gz_md5: str                 # MD5 of the published .gz
    content_md5: Optional[str]  # MD5 of the decompressed IDX bytes; None: not known here
    sha256: Optional[str] = None  # SHA-256 of the published .gz, checked on download when known


@dataclass(frozen=True)
class ImageSet:
    folder: str                 # relative folder under a data root
    url: str                    # download location of the four files
    files: dict[str, IdxFile]   # keys: train_images, train_labels, test_images, test_labels
    classes: tuple[str, ...]


IMAGE_SETS: dict[str, ImageSet] = {
    "mnist": ImageSet(
        folder="mnist",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train_images": IdxFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", None,
                                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            # Decompressed label MD5s: of the raw files locuslab/TCN keeps in TCN/mnist_pixel/data/mnist/raw/.
            "train_labels": IdxFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                                    "a25bea736e30d166cdddb491f175f624",
                                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            "test_images": IdxFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", None,
                                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            "test_labels": IdxFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                                   "27ae3e4e09519cfbb04c329615203637",
                                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        },
        classes=tuple("0123456789"),
    ),
    "fashion_mnist": ImageSet(
        folder="fashion-mnist",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train_images": IdxFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                    "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train_labels": IdxFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                                    "9018921c3c673c538a1fc5bad174d6f9"),
            "test_images": IdxFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                                   "8181f5470baa50b63fa0f6fddb340f0a"),
            "test_labels": IdxFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                                   "15d484375f8d13e6eb1aabb0c3f46965"),
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    ),
}

IMAGE_SIDE = 28
TRAIN_IMAGES, TEST_IMAGES = 60000, 10000


@dataclass
class ImageData:
    """A set decoded: images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64, official split."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def idx_content(path: Path, spec: IdxFile) -> bytes:
    """The decompressed IDX bytes of ``path``, after checking it is the published archive or
    a re-compression of the published content (see the module docstring)."""
    raw = path.read_bytes()
    try:
        content = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        problem = f"it is not a gzip file ({exc})"
    else:
        raw_md5 = hashlib.md5(raw).hexdigest()
        content_md5 = (hashlib.md5(content).hexdigest()
                       if raw_md5 != spec.gz_md5 and spec.content_md5 is not None else None)
        if raw_md5 == spec.gz_md5 or (spec.content_md5 is not None and content_md5 == spec.content_md5):
            return content
        problem = (f"its bytes (MD5 {raw_md5}) are not the published archive's "
                   f"({spec.gz_md5}), and " + (
                       f"its decompressed content (MD5 {content_md5}) is not the published "
                       f"content ({spec.content_md5})" if spec.content_md5 is not None
                       else "no checksum of the decompressed content is known for it"))
    if default_cache_dir() in path.resolve().parents:
        path.unlink()  # a bad download: the next run downloads it again
    raise DataError(f"{path} was refused: {problem}. Replace it with the published file {spec.name}.")


def decode_idx(content: bytes, where: str, dims: int) -> np.ndarray:
    """An IDX file's array of unsigned bytes with ``dims`` dimensions."""
    magic = int.from_bytes(content[:4], "big") if len(content) >= 4 else -1
    if magic != 0x0800 + dims:
        raise DataError(f"{where} is not an IDX file of unsigned bytes with {dims} dimension(s) (magic {magic:#x}).")
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    header = 4 + 4 * dims
    if len(content) != header + int(np.prod(shape)):
        raise DataError(f"{where}: the header announces shape {shape}, the file has {len(content) - header} bytes.")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def load_images(dataset: str, data_dir: Optional[str] = None) -> ImageData:
    """The official training and test parts of ``dataset`` (a key of ``IMAGE_SETS``)."""
    spec = IMAGE_SETS[dataset]
    arrays = {}
    for part, file in spec.files.items():
        path = corpus_file(f"{spec.folder}/{file.name}", url=spec.url + file.name, sha256=file.sha256,
                           data_dir=data_dir)
        array = decode_idx(idx_content(path, file), str(path), dims=3 if part.endswith("images") else 1)
        expected = TRAIN_IMAGES if part.startswith("train") else TEST_IMAGES
        if array.shape[0] != expected or array.shape[1:] not in ((), (IMAGE_SIDE, IMAGE_SIDE)):
            raise DataError(f"{path} holds an array of shape {array.shape}; expected {expected} "
                            f"{'images of 28 x 28' if part.endswith('images') else 'labels'}.")
        arrays[part] = torch.from_numpy(array.copy())
    for split in ("train", "test"):
        if int(arrays[f"{split}_labels"].max()) >= len(spec.classes):
            raise DataError(f"the {split} labels of {dataset} go beyond the {len(spec.classes)} classes.")
    return ImageData(arrays["train_images"], arrays["train_labels"].long(), arrays["test_images"],
                     arrays["test_labels"].long())
