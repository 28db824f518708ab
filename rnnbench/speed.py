"""Speed benchmark: ``rnnbench-speed`` times every cell preset against the best
implementation available, in the same process.

    rnnbench-speed --threads 2 --seq-len 200 --batch 64 --input-size 64 --hidden 256 \\
                   --paths fast,step --out /tmp/speed

Method
------
- **What runs.** Each cell preset (``conf/cell/*.yaml``, default: all of them) is
  built as a :class:`~rnnbench.stack.CellStack` with the preset's layers, direction,
  dropout and cell options, at every point of the grid (T, batch, hidden, input
  size), in training mode, on a random input ``(B, T, input_size)``. Path ``fast``
  is the cell's own ``forward``; path ``step`` is its reference loop
  (``use_fused = False`` where the cell has that flag, else ``Cell.loop_steps``).
  The preset's inter-layer dropout is kept (it is part of what a training step
  costs), while references run with ``dropout=0``: for ``stacked_gru`` (dropout 0.1)
  the candidate does two dropouts more than its reference.
- **References**, chosen by the cell's registry name, with the same input and
  hidden sizes, layers and direction, ``dropout=0``, ``batch_first=True``:
  ``gru`` -> ``torch.nn.GRU``; ``lstm`` -> ``torch.nn.LSTM``; ``rnn`` ->
  ``torch.nn.RNN`` (same nonlinearity); ``indrnn`` -> ``torch.nn.RNN(relu)``;
  ``sru`` -> the ``sru`` package's ``SRU`` (time-first, its only layout: the input
  is transposed once, outside the timing; skipped with a note if not importable)
  and ``torch.nn.LSTM``. Any other cell gets no reference and no ratio.
- **Timing.** ``fwd`` is one forward call (autograd recording, as in training);
  ``fwd+bwd`` is a forward call, ``output.sum()`` and ``backward()`` (gradients
  reset to None beforehand, untimed). Every module (candidate paths and references)
  first runs ``--warmup`` untimed rounds, then ``--repeats`` timed rounds,
  **interleaved**: in each round every module runs once (the order reversed every
  other round), so that machine noise hits candidates and references alike. On CPU
  the clock is ``time.perf_counter``; on CUDA, CUDA events after a synchronize.
  Reported: the median and the min over the repeats.
- **Noise.** Each row records ``other_cpu``, the share of all CPUs that other
  processes used while it was measured (Linux ``/proc/stat`` minus this process's
  CPU time), and the table warns when it is high: with ``--threads`` = the core
  count, a multi-threaded kernel then waits for a descheduled thread at every
  parallel region (measured here: one 64×256×768 matmul, 0.5 ms alone, took 22 ms
  with the other core busy), and the timings mean little. Ratios suffer less
  (interleaving), but do not trust them either.
- **Ratio** = the median over rounds of ``time(candidate) / time(reference)``
  within the same round (paired), for ``fwd`` and for ``fwd+bwd``; below 1 the
  candidate is faster. The table shows the ``fwd+bwd`` ratio.
- **Throughput.** tokens/s = ``B·T / median time``.
- **GFLOP/s** = FLOPs / median time, with FLOPs = ``stack.flops_per_step()`` (the
  cells' own formula, summed over layers and directions; a multiply-add counts 2)
  ``× B × T`` for ``fwd``, and **3×** that for ``fwd+bwd`` (the usual convention:
  backward costs about twice the forward, gradients w.r.t. inputs and weights).
  Empty when a cell does not give its FLOPs.
- **Memory.** CUDA: ``peak_mem_mb`` = ``torch.cuda.max_memory_allocated`` during a
  ``fwd+bwd`` call, minus what was allocated before it (activations, gradients and
  workspace). CPU: ``peak_mem_mb`` is empty: ``tracemalloc`` does not see torch's
  allocator, and ``ru_maxrss`` is a process-wide high-water mark that never goes
  down, so it cannot tell one module from the next in an interleaved run.
  ``max_rss_mb`` (``ru_maxrss`` after the measurement) is recorded as context only.

Output: a table on stdout, and one row per measurement (candidate path × reference;
a row with an empty reference when there is none) in ``OUT.csv`` and ``OUT.json``,
every row carrying device, torch version, threads and dtype (see ``COLUMNS``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import difflib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from .registry import CELLS
from .stack import STACK_KEYS, CellStack

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# One row per measurement, in this order, in the CSV and the JSON.
COLUMNS = [
    "preset",           # config preset (conf/cell/<preset>.yaml)
    "cell",             # registry name of the cell class
    "path",             # fast (the cell's forward) or step (its reference loop)
    "seq_len", "batch", "hidden", "input_size", "num_layers", "bidirectional",
    "ms_fwd", "ms_fwd_min",            # forward: median and min over repeats, milliseconds
    "ms_fwd_bwd", "ms_fwd_bwd_min",    # forward + backward: median and min
    "tokens_per_s_fwd", "tokens_per_s_fwd_bwd",  # B*T / median time
    "flops_per_step",   # forward FLOPs per sequence per step, whole stack (empty if unknown)
    "gflops_fwd", "gflops_fwd_bwd",    # achieved GFLOP/s (fwd+bwd counts 3x the forward FLOPs)
    "peak_mem_mb",      # CUDA only: peak allocated during fwd+bwd above the baseline
    "max_rss_mb",       # process-wide ru_maxrss after the measurement (context only)
    "reference",        # the module compared with (empty: none known)
    "ref_ms_fwd", "ref_ms_fwd_bwd",    # the reference's medians, same rounds
    "ratio_fwd", "ratio_fwd_bwd",      # median of per-round time(candidate) / time(reference)
    "device", "device_name", "torch_version", "threads", "dtype", "repeats", "warmup",
    "other_cpu",        # share of all CPUs used by other processes while this point ran (Linux; 0 = quiet machine)
    "note",
]


# --- presets ----------------------------------------------------------------------------
def resolve_preset(path: Path, seq_len: int) -> dict:
    """The preset as a plain dict, interpolations resolved with ``task.seq_len = seq_len``."""
    config = OmegaConf.create({"cell": OmegaConf.load(path), "task": {"seq_len": seq_len}})
    return OmegaConf.to_container(config.cell, resolve=True)


# --- modules ------------------------------------------------------------------------------
def build_stack(preset: dict, input_size: int, hidden: int) -> CellStack:
    cell_options = {k: v for k, v in preset.items() if k not in STACK_KEYS}
    return CellStack(CELLS.get(preset["name"]), input_size, hidden, num_layers=preset["num_layers"],
                     bidirectional=preset["bidirectional"], dropout=preset["dropout"], **cell_options)


def use_step_path(stack: CellStack) -> CellStack:
    """Switch every cell of ``stack`` to its reference loop, in place."""
    for cell in stack.cells:
        if hasattr(cell, "use_fused"):
            cell.use_fused = False
        else:
            cell.forward = cell.loop_steps  # instance attribute: nn.Module.__call__ finds it first
    return stack


def build_references(preset: dict, input_size: int, hidden: int, device: torch.device,
                     dtype: torch.dtype) -> tuple[list[tuple[str, nn.Module, bool]], list[str]]:
    """``[(label, module, time_first)]`` for the preset's cell, and notes (e.g. a missing package)."""
    cell, options = preset["name"], {k: v for k, v in preset.items() if k not in STACK_KEYS}
    same = dict(num_layers=preset["num_layers"], bidirectional=preset["bidirectional"], dropout=0.0,
                batch_first=True, bias=options.get("bias", True))
    refs, notes = [], []
    if cell == "gru":
        refs.append(("torch.nn.GRU", nn.GRU(input_size, hidden, **same), False))
    elif cell == "lstm":
        refs.append(("torch.nn.LSTM", nn.LSTM(input_size, hidden, **same), False))
    elif cell == "rnn":
        nonlinearity = options.get("nonlinearity", "tanh")
        refs.append((f"torch.nn.RNN({nonlinearity})", nn.RNN(input_size, hidden, nonlinearity=nonlinearity, **same),
                     False))
    elif cell == "indrnn":
        refs.append(("torch.nn.RNN(relu)", nn.RNN(input_size, hidden, nonlinearity="relu", **same), False))
    elif cell == "sru":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its CUDA kernels fail to compile without CUDA: the CPU path works
                from sru import SRU
                sru = SRU(input_size, hidden, num_layers=preset["num_layers"], bidirectional=preset["bidirectional"],
                          dropout=0.0).to(device=device, dtype=dtype)
                sru(torch.zeros(1, 1, input_size, device=device, dtype=dtype))  # fails here if its kernels do
            refs.append(("sru.SRU", sru, True))
        except Exception as exc:  # not installed, or broken on this device: no ratio against it
            notes.append(f"{preset['name']}: the sru package does not run here ({type(exc).__name__}: {exc}); "
                         "no sru.SRU reference")
        refs.append(("torch.nn.LSTM", nn.LSTM(input_size, hidden, **same), False))
    return [(label, module.to(device=device, dtype=dtype).train(), time_first)
            for label, module, time_first in refs], notes


# --- timing -------------------------------------------------------------------------------
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


# --- one grid point ----------------------------------------------------------------------
def bench_point(preset_name: str, preset: dict, paths: list[str], seq_len: int, batch: int, hidden: int,
                input_size: int, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int,
                context: dict) -> tuple[list[dict], list[str]]:
    """All paths of one preset and its references at one grid point -> rows, notes."""
    torch.manual_seed(0)
    x = torch.randn(batch, seq_len, input_size, device=device, dtype=dtype)
    x_time_first = x.transpose(0, 1).contiguous()  # for the sru package (its only layout)

    stack = build_stack(preset, input_size, hidden).to(device=device, dtype=dtype).train()
    candidates = []
    for path in paths:
        module = stack if path == "fast" else use_step_path(copy.deepcopy(stack))
        candidates.append(Measured(path, module, x))
    refs, notes = build_references(preset, input_size, hidden, device, dtype)
    references = [Measured(label, module, x_time_first if time_first else x) for label, module, time_first in refs]

    other_cpu = OtherCpu()
    other_cpu.start()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Running SRU on CPU")  # the sru package's CPU path, on purpose
        measure_interleaved(candidates + references, device, warmup, repeats)
    other_cpu_share = other_cpu.share()

    flops = stack.flops_per_step()
    tokens = batch * seq_len
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    rows = []
    for candidate in candidates:
        ms_fwd, ms_fwd_bwd = statistics.median(candidate.fwd) * 1e3, statistics.median(candidate.fwd_bwd) * 1e3
        base = {
            "preset": preset_name, "cell": preset["name"], "path": candidate.label,
            "seq_len": seq_len, "batch": batch, "hidden": hidden, "input_size": input_size,
            "num_layers": preset["num_layers"], "bidirectional": preset["bidirectional"],
            "ms_fwd": ms_fwd, "ms_fwd_min": min(candidate.fwd) * 1e3,
            "ms_fwd_bwd": ms_fwd_bwd, "ms_fwd_bwd_min": min(candidate.fwd_bwd) * 1e3,
            "tokens_per_s_fwd": tokens / (ms_fwd / 1e3), "tokens_per_s_fwd_bwd": tokens / (ms_fwd_bwd / 1e3),
            "flops_per_step": flops,
            "gflops_fwd": None if flops is None else flops * tokens / (ms_fwd / 1e3) / 1e9,
            "gflops_fwd_bwd": None if flops is None else 3 * flops * tokens / (ms_fwd_bwd / 1e3) / 1e9,
            "peak_mem_mb": None if candidate.peak_bytes is None else candidate.peak_bytes / 2**20,
            "max_rss_mb": max_rss_mb,
            **context,
            "other_cpu": other_cpu_share,
            "note": "; ".join(notes) or None,
        }
        if not references:
            rows.append({**base, "reference": None, "ref_ms_fwd": None, "ref_ms_fwd_bwd": None,
                         "ratio_fwd": None, "ratio_fwd_bwd": None})
        for reference in references:
            rows.append({
                **base,
                "reference": reference.label,
                "ref_ms_fwd": statistics.median(reference.fwd) * 1e3,
                "ref_ms_fwd_bwd": statistics.median(reference.fwd_bwd) * 1e3,
                "ratio_fwd": paired_ratio(candidate.fwd, reference.fwd),
                "ratio_fwd_bwd": paired_ratio(candidate.fwd_bwd, reference.fwd_bwd),
            })
    return [{column: row[column] for column in COLUMNS} for row in rows], notes


# --- output -------------------------------------------------------------------------------
def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=title)
    for header in ("preset", "path", "T", "B", "H", "ms fwd", "ms fwd+bwd", "tokens/s", "GFLOP/s",
                   "reference", "ratio"):
        table.add_column(header, justify="left" if header in ("preset", "path", "reference") else "right")
    for row in rows:
        table.add_row(row["preset"], row["path"], str(row["seq_len"]), str(row["batch"]), str(row["hidden"]),
                      fmt(row["ms_fwd"], ".1f"), fmt(row["ms_fwd_bwd"], ".1f"),
                      fmt(row["tokens_per_s_fwd_bwd"], ",.0f"), fmt(row["gflops_fwd_bwd"], ".1f"),
                      row["reference"] or "-", fmt(row["ratio_fwd_bwd"], ".2f"))
    Console(width=160).print(table)


def write_outputs(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """``out.csv`` and ``out.json`` (the JSON is a list of rows; missing values are empty / null)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


# --- command line -------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench-speed",
        description="Time forward and forward+backward of cell presets against torch.nn / sru references.",
        epilog="Lists are comma-separated: --seq-len 100,200 --batch 32,64. Method: see `python -m pydoc rnnbench.speed`.",
    )
    parser.add_argument("--cells", type=name_list, default=None,
                        help="cell presets (conf/cell/*.yaml names); default: all presets")
    # Defaults: the configuration of the speed targets (a typical long-range task on a CPU).
    parser.add_argument("--seq-len", type=int_list, default=[200], help="sequence lengths T (default 200)")
    parser.add_argument("--batch", type=int_list, default=[64], help="batch sizes B (default 64)")
    parser.add_argument("--hidden", type=int_list, default=[256],
                        help="hidden sizes H, per direction, overriding the presets' (default 256)")
    parser.add_argument("--input-size", type=int_list, default=[64], help="input sizes (default 64)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; median and min reported (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--paths", type=name_list, default=["fast"],
                        help="fast (the cell's forward) and/or step (its reference loop); e.g. fast,step")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem: writes OUT.csv and OUT.json "
                             "(default results/speed/speed_<timestamp>)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    unknown_paths = [p for p in args.paths if p not in ("fast", "step")]
    if unknown_paths or not args.paths:
        parser.error(f"--paths: expected fast and/or step, got {','.join(args.paths)}")
    return args


def cpu_name() -> str:
    """The CPU model (Linux: /proc/cpuinfo), else the platform's machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[list[str]] = None) -> None:
    """Console script ``rnnbench-speed`` (returns None: the console wrapper exits with it)."""
    args = parse_args(argv)
    from .cli import config_search_path, preset_files

    # Cell presets as the rnnbench command sees them (packaged, RNNBENCH_CONFIG_PATH, plugins).
    presets = preset_files("cell", config_search_path())
    names = args.cells if args.cells is not None else sorted(presets)
    for name in names:
        if name not in presets:
            close = difflib.get_close_matches(name, sorted(presets), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            sys.exit(f"rnnbench-speed: unknown cell preset {name!r}.{hint} "
                     f"Known presets: {', '.join(sorted(presets))}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("rnnbench-speed: --device cuda, but torch sees no CUDA device.")
    threads_before = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        run(args, presets, names)
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests)


def run(args: argparse.Namespace, presets: dict[str, Path], names: list[str]) -> None:
    """Benchmark ``names`` over the grid of ``args``; print the table, write OUT.csv / OUT.json."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    context = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    out = args.out or Path("results") / "speed" / f"speed_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    if out.suffix in (".csv", ".json"):
        out = out.with_suffix("")

    rows, notes = [], []
    grid = [(t, b, h, i) for t in args.seq_len for b in args.batch for h in args.hidden for i in args.input_size]
    for name in names:
        for seq_len, batch, hidden, input_size in grid:
            try:
                preset = resolve_preset(presets[name], seq_len)
                point_rows, point_notes = bench_point(name, preset, args.paths, seq_len, batch, hidden, input_size,
                                                      device, dtype, args.warmup, args.repeats, context)
            except Exception as exc:  # e.g. a preset whose cell is not registered (yet): report, go on
                notes.append(f"skipped {name} at T={seq_len} B={batch} H={hidden} I={input_size}: "
                             f"{type(exc).__name__}: {exc}")
                continue
            rows += point_rows
            notes += [n for n in point_notes if n not in notes]
            print(f"  done {name} T={seq_len} B={batch} H={hidden} I={input_size}", file=sys.stderr, flush=True)

    title = (f"rnnbench-speed: {context['device']} ({context['device_name']}), torch {context['torch_version']}, "
             f"{context['threads']} threads, {args.dtype}, median of {args.repeats} (warmup {args.warmup}); "
             f"ratio = fwd+bwd time / reference's, same process, interleaved")
    print_table(rows, title)
    busy = sorted({(row["preset"], row["other_cpu"]) for row in rows if (row["other_cpu"] or 0) > 0.05})
    if busy:
        notes.append("other processes were busy during: " + ", ".join(f"{preset} ({share:.0%} of the CPUs)"
                                                                       for preset, share in busy)
                     + "; those timings are unreliable (see other_cpu in the CSV)")
    for note in notes:
        print(f"note: {note}")
    csv_path, json_path = write_outputs(rows, out)
    print(f"wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
