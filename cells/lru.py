"""Linear Recurrent Unit (LRU).

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, "Resurrecting Recurrent
Neural Networks for Long Sequences", ICML, arXiv:2303.06349 (appendix A: the
authors' JAX code). A linear recurrence with a complex diagonal state matrix, and a
real output::

    x_t = Λ ⊙ x_{t-1} + γ ⊙ (B u_t)          x ∈ C^N, Λ = diag(λ_1 .. λ_N)
    y_t = Re(C x_t) + D ⊙ u_t                 y ∈ R^H

- exponential parametrisation: ``λ = exp(−exp(ν) + i exp(θ))``, so ``|λ| = exp(−exp(ν))``
  lies in (0, 1) whatever ``ν`` (always stable), with the phase ``exp(θ)``;
- ring initialisation: ``|λ|`` uniform on the ring ``r_min <= |λ| <= r_max`` (by area:
  ``|λ|² ~ U(r_min², r_max²)``, so ``ν = log(−½ log U(r_min², r_max²))``), the phase
  uniform on ``[0, max_phase]`` (``θ = log(max_phase U(0, 1))``);
- γ normalisation: ``γ = exp(γ_log)``, initialised to ``sqrt(1 − |λ|²)`` (then a state
  driven by white noise keeps the input's scale) and trained, as the paper's code;
- ``B = B_re + i B_im`` with entries ``N(0, 1/(2I))``, ``C = C_re + i C_im`` with entries
  ``N(0, 1/N)``, ``D ~ N(0, 1)`` (the paper's code). The skip term ``D ⊙ u`` needs
  ``I = H``; for ``I != H`` (e.g. a stack's first layer) ``D`` is a learned ``(H, I)``
  matrix with entries ``N(0, 1/I)`` (this cell's addition, as SRU's highway projection).

The state is complex; it is stored as the pair of real tensors ``(x.real, x.imag)``,
each ``(B, N)``, since the framework's state helpers and checkpoints expect real
tensors. ``state_dim`` (``N``) defaults to ``hidden_size``. No gates: nothing to expose
for the diagnostics beyond outputs and states (``|λ|`` is a parameter, not a gate).

``glu=True`` appends the position-wise part of the paper's layer (appendix A,
``SequenceLayer``): ``y ← GELU(y)`` (tanh approximation, flax's default), then the
gated linear unit ``y ← (W_1 y + b_1) ⊙ σ(W_2 y + b_2)`` (``torch.nn.Linear``'s
initialisation); the paper's dropout, residual connection and normalisation are left
to the model around the stack. Without it the layer is linear in its inputs, and so is
a stack of such layers (``CellStack`` puts nothing between layers): it cannot compute
a product of inputs, e.g. the adding problem's value times marker.

Training path (``fused_forward``): the input projection of every step in one GEMM (its
rows ordered ``re, im`` per state unit, so the result is a complex tensor without a
copy), then per block of 16 steps the recurrence, the output projection and the GLU. The
recurrence runs as ``scan`` (:data:`rnnbench.scans.SCANS`) chooses: the parallel
(associative) scan of the paper (:class:`rnnbench.scans.AssociativeScan`; ``parallel``,
and ``auto`` off the CPU) or the fused loop over complex tensors
(:class:`rnnbench.scans.LinearRecurrence`; ``loop``, and ``auto`` on the CPU; why:
:mod:`rnnbench.scans`). The step (``recurrence``) writes the complex products out in
real arithmetic: the specification the scan is tested against.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cell import Cell, Reference
from rnnbench.errors import check, is_int, is_number
from rnnbench.registry import register_cell
from rnnbench.scans import checked_scan, linear_scan, scan_blocks, use_parallel_scan

LRUState = tuple[Tensor, Tensor]  # (x.real, x.imag), each (B, N)


@register_cell("lru")
class LRU(Cell):
    """LRU layer (Orvieto et al. 2023): complex diagonal linear recurrence, exponential
    parametrisation, ring initialisation, γ normalisation, ``y = Re(C x) + D u``."""

    # (and D a vector: input_size == hidden_size, a size the contract runs)
    option_examples = [{"state_dim": 3}, {"glu": True}, {"scan": "parallel"}, {"scan": "loop"}]

    def __init__(self, input_size: int, hidden_size: int, state_dim: Optional[int] = None, r_min: float = 0.0,
                 r_max: float = 1.0, max_phase: float = 6.28, glu: bool = False, scan: str = "auto"):
        super().__init__(input_size, hidden_size)
        check(state_dim is None or (is_int(state_dim) and state_dim >= 1), "cell.state_dim", state_dim,
              "null (the hidden size) or an integer >= 1, the number N of complex state units")
        check(is_number(r_min) and is_number(r_max) and 0.0 <= r_min < r_max <= 1.0, "cell.r_min",
              (r_min, r_max), "0 <= cell.r_min < cell.r_max <= 1 (the ring |λ| is drawn from)")
        check(is_number(max_phase) and max_phase > 0, "cell.max_phase", max_phase, "a number > 0 (radians)")
        check(isinstance(glu, bool), "cell.glu", glu, "true or false")
        self.scan = checked_scan(scan)
        self.state_dim = hidden_size if state_dim is None else state_dim
        self.r_min, self.r_max, self.max_phase = float(r_min), float(r_max), float(max_phase)
        N, H, I = self.state_dim, hidden_size, input_size
        self.nu_log, self.theta_log, self.gamma_log = (nn.Parameter(torch.empty(N)) for _ in range(3))
        self.B_re, self.B_im = nn.Parameter(torch.empty(N, I)), nn.Parameter(torch.empty(N, I))
        self.C_re, self.C_im = nn.Parameter(torch.empty(H, N)), nn.Parameter(torch.empty(H, N))
        self.D = nn.Parameter(torch.empty(H) if I == H else torch.empty(H, I))
        self.glu = nn.Linear(H, 2 * H) if glu else None  # [W_1; W_2]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Ring initialisation, γ normalisation, Glorot-scaled B and C (module docstring)."""
        N, I = self.state_dim, self.input_size
        with torch.no_grad():
            radius_squared = torch.empty(N).uniform_(self.r_min ** 2, self.r_max ** 2)
            self.nu_log.copy_(torch.log(-0.5 * torch.log(radius_squared)))
            self.theta_log.copy_(torch.log(self.max_phase * torch.rand(N)))
            self.gamma_log.copy_(torch.log(torch.sqrt(1 - radius_squared)))
            for weight in (self.B_re, self.B_im):
                weight.normal_(0.0, 1.0 / math.sqrt(2 * I))
            for weight in (self.C_re, self.C_im):
                weight.normal_(0.0, 1.0 / math.sqrt(N))
            self.D.normal_(0.0, 1.0 if self.D.dim() == 1 else 1.0 / math.sqrt(I))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, state_dim={self.state_dim}, r_min={self.r_min}, "
                f"r_max={self.r_max}, max_phase={self.max_phase}, glu={self.glu is not None}, scan={self.scan}")

    def initial_state(self, batch_size: int, device=None, dtype=None) -> LRUState:
        """``(x.real, x.imag)``, zeros ``(B, N)`` each."""
        real = torch.zeros(batch_size, self.state_dim, device=self.nu_log.device if device is None else device,
                           dtype=self.nu_log.dtype if dtype is None else dtype)
        return real, torch.zeros_like(real)

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, state_dim: Optional[int] = None, glu: bool = False,
                       **_) -> int:
        """``3N`` (ν, θ, γ), ``2NI`` (B), ``2HN`` (C), ``H`` for ``D`` (``HI`` when ``I != H``),
        and ``2H(H + 1)`` for the GLU."""
        N, H, I = hidden_size if state_dim is None else state_dim, hidden_size, input_size
        return 3 * N + 2 * N * I + 2 * H * N + (H if I == H else H * I) + (2 * H * (H + 1) if glu else 0)

    def flops_per_step(self) -> int:
        """``4NI`` for ``γ B u`` (γ folded into the matrix), ``8N`` for the complex update
        ``λ x + Bu`` (4 products, 4 sums), ``4HN`` for ``Re(C x)``, and the skip term:
        ``2H`` (``D ⊙ u`` and the sum) or ``2HI + H`` with the matrix ``D``; the GLU adds
        ``4H²`` (matmul), ``2H`` (biases), ``H`` (GELU) and ``2H`` (σ and the product)."""
        N, H, I = self.state_dim, self.hidden_size, self.input_size
        flops = 4 * N * I + 8 * N + 4 * H * N + (2 * H if self.D.dim() == 1 else 2 * H * I + H)
        return flops + (4 * H * H + 5 * H if self.glu is not None else 0)

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """``(Re λ, Im λ)``, each ``(N,)``."""
        modulus, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)
        return modulus * torch.cos(phase), modulus * torch.sin(phase)

    # --- one step -------------------------------------------------------------------
    def input_projection(self, u: Tensor) -> Tensor:
        """``[γ ⊙ B_re u; γ ⊙ B_im u; D u]``, ``(..., 2N + H)``."""
        gamma = torch.exp(self.gamma_log)[:, None]
        projected = F.linear(u, torch.cat([gamma * self.B_re, gamma * self.B_im]))
        return torch.cat([projected, self._skip(u)], dim=-1)

    def recurrence(self, p_t: Tensor, state: LRUState) -> tuple[Tensor, LRUState, dict[str, Tensor]]:
        """``x' = λ x + γ B u`` in real arithmetic, ``y = C_re Re x' − C_im Im x' + D u`` (then the GLU)."""
        N = self.state_dim
        bu_re, bu_im, du = p_t[..., :N], p_t[..., N : 2 * N], p_t[..., 2 * N :]
        x_re, x_im = state
        lam_re, lam_im = self.eigenvalues()
        new_re = lam_re * x_re - lam_im * x_im + bu_re
        new_im = lam_re * x_im + lam_im * x_re + bu_im
        y = F.linear(new_re, self.C_re) - F.linear(new_im, self.C_im) + du
        return self._block(y), (new_re, new_im), {}

    def _skip(self, u: Tensor) -> Tensor:
        return self.D * u if self.D.dim() == 1 else F.linear(u, self.D)

    def _block(self, y: Tensor) -> Tensor:
        """With ``glu``: ``GLU(GELU(y))``, position-wise; else ``y``."""
        return y if self.glu is None else F.glu(self.glu(F.gelu(y, approximate="tanh")), dim=-1)

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, u: Tensor, state: LRUState, mask: Optional[Tensor]) -> tuple[Tensor, LRUState]:
        """One GEMM in, then per block of 16 steps the scan (``scan``: associative or the
        fused loop), the output projection and the GLU (time-first; a block's tensors stay
        in cache: :func:`rnnbench.scans.scan_blocks`)."""
        u = u.transpose(0, 1)  # (T, B, I)
        T, batch_size, _ = u.shape
        N = self.state_dim
        gamma = torch.exp(self.gamma_log)[:, None, None]
        w_in = (torch.stack([self.B_re, self.B_im], dim=1) * gamma).reshape(2 * N, self.input_size)  # re, im per unit
        bu = torch.view_as_complex(F.linear(u, w_in).view(T, batch_size, N, 2))  # (T, B, N) complex
        lam = torch.complex(*self.eigenvalues())
        w_out = torch.stack([self.C_re, -self.C_im], dim=2).reshape(self.hidden_size, 2 * N)  # Re(C x) from re, im
        parallel = use_parallel_scan(self.scan, bu.device)

        def run_block(bu_b: Tensor, u_b: Tensor, real: Optional[Tensor], x0: Tensor) -> tuple[Tensor, Tensor]:
            x = self._scan_block(lam, bu_b, real, x0, parallel)
            y = self._block(F.linear(torch.view_as_real(x).reshape(len(x), batch_size, 2 * N), w_out) + self._skip(u_b))
            return (y if real is None else torch.where(real, y, 0.0)), x[-1]

        real = None if mask is None else mask.t().unsqueeze(-1)
        y, last = scan_blocks(run_block, [bu, u, real], torch.complex(*state))
        return y.transpose(0, 1), (last.real.contiguous(), last.imag.contiguous())

    @staticmethod
    def _scan_block(lam: Tensor, bu: Tensor, real: Optional[Tensor], x0: Tensor, parallel: bool) -> Tensor:
        """``x_t = λ x_{t-1} + bu_t`` over one block; padded steps: ``λ → 1``, ``bu → 0``."""
        a = lam.expand_as(bu) if real is None else torch.where(real, lam, torch.ones_like(lam))
        if real is not None:
            bu = torch.where(real, bu, torch.zeros_like(bu))
        return linear_scan(a, bu, x0, parallel)

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.LSTM`` of the same width (cuDNN on a GPU)."""
        return [Reference("torch.nn.LSTM", nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                                                   bidirectional=bidirectional))]
