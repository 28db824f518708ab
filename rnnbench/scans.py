"""Linear recurrences over a whole sequence: ``h_t = a_t ⊙ h_{t-1} + b_t``.

Cells whose state enters its own update only linearly (QRNN's pooling, minGRU and
minLSTM, LRU) need no step loop through autograd for training: every ``a_t, b_t``
comes from the inputs, and the recurrence is a scan. Tensors are time-first,
``(T, B, ...)``, so that each step's slab is one contiguous block. Three ways, each
exact (the same function as the step loop, to rounding):

- :class:`LinearRecurrence`: a fused loop (one ``addcmul`` per step, no autograd
  graph) with a hand-written backward; real or complex tensors.
- :class:`AssociativeScan`: the parallel prefix scan of the affine maps
  ``h -> a h + b`` (Blelloch 1990; the LRU paper's ``jax.lax.associative_scan``):
  pairs of steps are composed, the half-length problem is solved recursively, and
  the other half is filled in from it: ``log2 T`` levels of whole-tensor operations,
  ``O(T)`` work; real or complex tensors; the backward is a scan too.
- :func:`log_space_scan`: the log-space scan of Heinsen (2023), as written in Feng
  et al. (2024, appendix B) for minGRU/minLSTM, for ``b_t > 0``:
  ``a*_t = Σ_{k<=t} log a_k``, ``log h_t = a*_t + logcumsumexp_{k<=t}(log b_k − a*_k)``.

Cells run them over blocks of :data:`BLOCK` steps (:func:`scan_blocks`), which keeps
the work in cache and bounds the error of the log-space scan.

Which one runs is the cells' ``scan`` option (:data:`SCANS`, :func:`use_parallel_scan`):
``parallel`` (the paper's scan: log-space or associative), ``loop`` (the fused loop), or
``auto``: the loop on CPU, the parallel scan on other devices. Why: a scan trades a
``T``-step dependency chain for ``log T`` levels of whole-tensor passes (or, in log
space, for several transcendental functions per element); that pays where thousands of
cores would otherwise wait on the chain, but on a few CPU cores every pass is bound by
memory bandwidth, and the fused loop makes the fewest (measured by ``rnnbench-speed``
here, 2 threads, B=64, H=256, T=784, forward+backward, parallel scan vs loop: minGRU
238 vs 195 ms, QRNN 336 vs 293 ms, LRU 1148 vs 1008 ms).

The backward of all three is the adjoint recurrence (:func:`adjoint`), run from the
last step to the first: with ``g_t = ∂L/∂h_t`` from outside,
``λ_t = g_t + a_{t+1} ⊙ λ_{t+1}``, and then ``∂L/∂b_t = λ_t``,
``∂L/∂a_t = λ_t ⊙ h_{t-1}``, ``∂L/∂h_0 = a_1 ⊙ λ_1`` (one ``addcmul`` per step).

Padding: a padded step has ``a = 1, b = 0`` (``log a = 0, log b = −inf``), so the state
passes through it unchanged, and gradients through it too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import check

SCANS = ("auto", "parallel", "loop")  # the values of a scan cell's ``scan`` option


def checked_scan(scan: str) -> str:
    """``scan`` if it is one of :data:`SCANS`, else a clear error (a cell's option check)."""
    check(scan in SCANS, "cell.scan", scan, "one of " + ", ".join(SCANS))
    return scan


def use_parallel_scan(scan: str, device: torch.device) -> bool:
    """Whether a cell with option ``scan`` (:data:`SCANS`) runs its parallel scan on
    ``device``: ``parallel`` yes, ``loop`` no, ``auto`` everywhere but on CPU (module docstring)."""
    return scan == "parallel" or (scan == "auto" and device.type != "cpu")


# Steps per block of scan_blocks: a block's tensors (16 x 64 x 256 floats = 1 MiB each)
# stay in cache, and the float32 error of the log-space scan is bounded by it.
BLOCK = 16


def times_previous_states(x: Tensor, h: Tensor, h0: Tensor) -> Tensor:
    """``x_t ⊙ h_{t-1}`` for every step (``h_{-1} = h0``), ``(T, B, ...)`` like ``x``, a new
    tensor, without building the shifted copy of ``h``."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    torch.mul(x[0], h0, out=out[0])
    torch.mul(x[1:], h[:-1], out=out[1:])
    return out


def adjoint(grad_h: Tensor, a: Tensor) -> Tensor:
    """``λ_t = g_t + a_{t+1} ⊙ λ_{t+1}`` (``λ_T = g_T``): the gradient reaching ``h_t``
    through every later step. A new tensor; ``a`` may broadcast against ``grad_h``."""
    lam = grad_h.clone(memory_format=torch.contiguous_format)
    steps, coefficients = lam.unbind(0), a.expand_as(lam).unbind(0)
    for t in range(len(steps) - 2, -1, -1):
        steps[t].addcmul_(coefficients[t + 1], steps[t + 1])
    return lam


class LinearRecurrence(torch.autograd.Function):
    """``apply(a, b, h0) -> h``: ``h_t = a_t ⊙ h_{t-1} + b_t`` for ``a, b: (T, B, ...)``,
    ``h0: (B, ...)``, real or complex; ``a`` may be an expanded (broadcast) tensor. The
    fused loop forward and the adjoint backward (module docstring; for complex tensors
    with ``conj(a)`` and ``conj(h_{t-1})``, PyTorch's convention for the gradient of a product)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = torch.empty_like(b, memory_format=torch.contiguous_format)
        state = h0
        for a_t, b_t, h_t in zip(a.unbind(0), b.unbind(0), h.unbind(0)):
            state = torch.addcmul(b_t, a_t, state, out=h_t)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor):
        a, h0, h = ctx.saved_tensors
        a = a.conj()  # a view; for real tensors, a itself
        lam = adjoint(grad_h, a)
        grad_a = times_previous_states(lam, h.conj(), h0.conj()) if ctx.needs_input_grad[0] else None
        grad_h0 = lam[0] * a[0] if ctx.needs_input_grad[2] else None
        return grad_a, lam, grad_h0


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, parallel: bool) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` by :class:`AssociativeScan` (``parallel``) or
    :class:`LinearRecurrence` (the fused loop); the same function, to rounding."""
    return (AssociativeScan if parallel else LinearRecurrence).apply(a, b, h0)


class AssociativeScan(torch.autograd.Function):
    """``apply(a, b, h0) -> h``: every ``h_t = a_t h_{t-1} + b_t`` by the parallel prefix
    scan (:func:`associative_scan`), time-first, real or complex; ``a`` may be an
    expanded (broadcast) tensor. Backward: the adjoint recurrence, itself an
    associative scan run from the last step (for complex tensors with ``conj(a)``,
    PyTorch's convention for the gradient of a product)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = associative_scan(a, b, h0)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor):
        a, h0, h = ctx.saved_tensors
        a = a.expand_as(h).conj()
        # λ_t = g_t + conj(a_{t+1}) λ_{t+1}: a scan over the reversed sequence.
        shifted = torch.cat([torch.zeros_like(a[:1]), a[1:].flip(0)])
        lam = associative_scan(shifted, grad_h.flip(0)).flip(0)
        grad_a = times_previous_states(lam, h.conj(), h0.conj()) if ctx.needs_input_grad[0] else None
        grad_h0 = lam[0] * a[0] if ctx.needs_input_grad[2] else None
        return grad_a, lam, grad_h0


def associative_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """Every ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``, default 0) by the parallel
    prefix scan (module docstring), time-first, real or complex.

    Steps ``2k`` and ``2k+1`` compose into one affine map ``h -> a' h + b'`` with
    ``a' = a_{2k+1} a_{2k}``, ``b' = a_{2k+1} b_{2k} + b_{2k+1}``; the scan of those
    ``T/2`` maps gives every odd ``h``, and ``h_{2k} = a_{2k} h_{2k-1} + b_{2k}`` the even ones.
    """
    if h0 is not None:
        b = torch.cat([torch.addcmul(b[0], a[0], h0).unsqueeze(0), b[1:]])
    return _scan_from_zero(a.expand_as(b), b)


def _scan_from_zero(a: Tensor, b: Tensor) -> Tensor:
    steps = b.shape[0]
    if steps <= 1:
        return b
    pairs = steps // 2
    a_even, a_odd = a[0 : 2 * pairs : 2], a[1 : 2 * pairs : 2]
    h = torch.empty_like(b, memory_format=torch.contiguous_format)
    h[1::2] = _scan_from_zero(a_odd * a_even, torch.addcmul(b[1 : 2 * pairs : 2], a_odd, b[0 : 2 * pairs : 2]))
    h[0] = b[0]
    h[2::2] = torch.addcmul(b[2::2], a[2::2], h[1 : steps - 1 : 2])  # h_2, h_4, ...
    return h


def log_space_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` from ``log a, log b: (T, B, ...)`` (``b > 0``) and ``h0``
    of any sign, as Feng et al. (2024, appendix B): ``a* = cumsum(log a)``,
    ``L = logcumsumexp(log b − a*)``, ``h = exp(a* + L) + exp(a*) ⊙ h0``. The initial
    state enters linearly, not through ``log`` (which needs ``h0 > 0``).

    Range: ``a*`` and ``L`` cancel in ``a* + L``, so the relative error of ``h`` is about
    ``2 eps |a*|``, and ``|a*| <= T max |log a|`` grows with the length: run it on
    blocks (:func:`scan_blocks`: ``T <= BLOCK``), each from the state the last one
    ended in. In float32 (``eps = 6e-8``) with 16-step blocks, ``|log a| <= 1`` (gates
    ``z <= 0.63``) gives at most ``2e-6`` and ``|log a| <= 6`` (``z <= 0.9975``) ``1.2e-5``,
    whatever the sequence's length.

    On CPU the cumulative sums run as a loop over time slabs (measured 10-15x faster
    than ``torch.cumsum`` / ``torch.logcumsumexp`` along the time dimension here);
    on other devices, as those parallel kernels.
    """
    a_star = _cumulative(torch.add, log_a)
    log_sum = _cumulative(torch.logaddexp, log_b - a_star)
    decay = torch.exp(a_star)  # exp(a*): what is left of h0
    return torch.exp(a_star.add_(log_sum)).addcmul_(decay, h0)


def _cumulative(op: Callable[..., Tensor], x: Tensor) -> Tensor:
    """Cumulative ``op`` (``torch.add`` or ``torch.logaddexp``) along dim 0, as a new tensor."""
    if x.device.type != "cpu":
        return torch.cumsum(x, 0) if op is torch.add else torch.logcumsumexp(x, 0)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    total = out[0].copy_(x[0])
    for x_t, out_t in zip(x.unbind(0)[1:], out.unbind(0)[1:]):
        total = op(total, x_t, out=out_t)
    return out


def scan_blocks(run_block: Callable[..., tuple[Tensor, Any]], inputs: Sequence[Optional[Tensor]], state: Any,
                block: int = BLOCK) -> tuple[Tensor, Any]:
    """Run ``run_block(*input_blocks, state) -> (output_block, state)`` over consecutive
    blocks of ``block`` steps of the time-first ``inputs`` (None stays None), each block
    from the state the previous one ended in; returns the outputs concatenated and the
    last state. Autograd chains the blocks through the states.

    Why blocks: every tensor of a block stays in the CPU's cache, and its elementwise
    work is a few vectorised operations. Whole-sequence operations measured 3-10x
    slower here, most of it in allocating (and page-faulting) fresh full-size tensors;
    ``split`` (not indexing) keeps autograd from allocating a full-size gradient per block.
    """
    steps = next(x for x in inputs if x is not None).shape[0]
    pieces = [x.split(block) if x is not None else [None] * -(-steps // block) for x in inputs]
    outputs = []
    for blocks in zip(*pieces):
        output, state = run_block(*blocks, state)
        outputs.append(output)
    return torch.cat(outputs), state
