"""The stack wrapper's readout of a whole sequence (issue 12.14): each direction after it has
read every input, for every registered cell."""

from __future__ import annotations

import pytest
import torch

from rnnbench.models import SequenceModel
from rnnbench.registry import CELLS
from rnnbench.stack import CellStack

I, H, B, T = 3, 4, 5, 6


@pytest.mark.parametrize("name", CELLS.names())
def test_bidirectional_final_output_reads_each_direction_after_the_whole_sequence(name):
    torch.manual_seed(0)
    stack = CellStack(CELLS.get(name), I, H, num_layers=2, bidirectional=True).double().eval()
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = torch.tensor([6, 4, 1, 6, 3])
    with torch.no_grad():
        y, _ = stack(x, lengths=lengths)
        final = stack.final_output(y, lengths)
        for b, length in enumerate(lengths.tolist()):  # each row alone, unpadded: its own last steps
            y_row, _ = stack(x[b:b + 1, :length])
            torch.testing.assert_close(final[b, :H], y_row[0, -1, :H])  # forward: after the last real input
            torch.testing.assert_close(final[b, H:], y_row[0, 0, H:])  # backward: after reading back to position 0
        perturbed = x.clone()
        perturbed[:, 0] += 1.0  # the first input: the last one the backward direction reads
        moved = stack.final_output(stack(perturbed, lengths=lengths)[0], lengths)
    assert (moved[:, H:] - final[:, H:]).abs().amax(dim=1).min() > 0  # every row's backward half sees it


def test_last_readout_of_a_bidirectional_model_uses_both_directions():
    """The adding problem's head reads ``final_output``: before the fix, perturbing every input but
    the last left the backward half of its input unchanged."""
    torch.manual_seed(0)
    model = SequenceModel(lambda n: CellStack(CELLS.get("gru"), n, H, bidirectional=True), 2, 1, readout="last")
    x = torch.randn(B, T, 2)
    with torch.no_grad():
        y, _ = model.stack(x)
        perturbed = x.clone()
        perturbed[:, :-1] += 1.0
        y2, _ = model.stack(perturbed)
    assert not torch.allclose(model.stack.final_output(y)[:, H:], model.stack.final_output(y2)[:, H:])
    assert torch.allclose(y[:, -1, H:], y2[:, -1, H:])  # what the old readout took: blind to the perturbation
