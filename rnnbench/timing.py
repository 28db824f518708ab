"""Measurement for ``rnnbench-speed`` (:mod:`rnnbench.speed`): interleaved timing of
modules in one process, paired ratios, the share of the CPUs other processes used
meanwhile, and the floor path's module (the input projections alone). Nothing here
knows about a particular cell or preset."""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds taken by ``fn()``: CUDA events on CUDA, ``perf_counter`` on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Measured:
    """One module under test and its timings over the timed rounds."""

    def __init__(self, label: str, module: nn.Module, x: torch.Tensor):
        self.label, self.module, self.x = label, module, x
        self.fwd: list[float] = []
        self.fwd_bwd: list[float] = []
        self.peak_bytes: Optional[int] = None

    def forward(self) -> None:
        self.module(self.x)

    def forward_backward(self) -> None:
        output = self.module(self.x)[0]
        output.float().sum().backward()

    def run_round(self, device: torch.device, record: bool) -> None:
        t_fwd = timed(self.forward, device)
        self.module.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        t_fwd_bwd = timed(self.forward_backward, device)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - baseline
            self.peak_bytes = max(self.peak_bytes or 0, peak)
        self.module.zero_grad(set_to_none=True)
        if record:
            self.fwd.append(t_fwd)
            self.fwd_bwd.append(t_fwd_bwd)

    def median_ms(self, which: str) -> float:
        return statistics.median(getattr(self, which)) * 1e3

    def min_ms(self, which: str) -> float:
        return min(getattr(self, which)) * 1e3


class InputProjections(nn.Module):
    """Path ``projection``: every cell's ``input_projection`` of a random time-first input of
    its width, ``(T, B, input_size)``, summed to one number (:mod:`rnnbench.speed`: the floor under every path)."""

    def __init__(self, stack: nn.Module, x: torch.Tensor):
        super().__init__()
        self.projecting = nn.ModuleList(stack.cells)
        self.inputs = [torch.randn(x.shape[1], x.shape[0], cell.input_size, device=x.device, dtype=x.dtype)
                       for cell in stack.cells]

    def forward(self, _: torch.Tensor) -> tuple[torch.Tensor]:
        return (sum(cell.input_projection(u).sum() for cell, u in zip(self.projecting, self.inputs)),)

    def flops_per_step(self) -> None:
        return None  # not a cell's step: no GFLOP/s column


def measure_interleaved(modules: list[Measured], device: torch.device, warmup: int, repeats: int) -> None:
    """``warmup`` untimed rounds, then ``repeats`` timed ones; each round runs every
    module once, in an order reversed every other round."""
    for round_index in range(warmup + repeats):
        gc.collect()  # never inside a timed call
        order = modules if round_index % 2 == 0 else modules[::-1]
        for measured in order:
            measured.run_round(device, record=round_index >= warmup)


def paired_ratio(candidate: list[float], reference: list[float]) -> float:
    """Median over rounds of candidate / reference time (both measured in the same round)."""
    return statistics.median(c / r for c, r in zip(candidate, reference))


def machine_busy_seconds() -> Optional[float]:
    """CPU seconds spent busy by the whole machine since boot (Linux /proc/stat; steal counts as busy)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherCpu:
    """Share of all CPUs that *other* processes used between ``start()`` and ``share()``:
    machine busy time minus this process's CPU time, over wall time × CPU count."""

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), machine_busy_seconds(), sum(os.times()[:2])

    def share(self) -> Optional[float]:
        busy = machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (sum(os.times()[:2]) - self.own)
        return round(max(0.0, others / ((time.perf_counter() - self.wall) * (os.cpu_count() or 1))), 3)
