"""Speed benchmark: ``rnnbench-speed`` times every cell preset against the best
implementation available, in the same process.

    rnnbench-speed --threads 2 --seq-len 200 --batch 64 --input-size 64 --hidden 256 \\
                   --paths fast,step,parallel,loop --out /tmp/speed

Method
------
- **What runs.** Each cell preset (``conf/cell/*.yaml``, default: all of them) is
  built as a :class:`~rnnbench.stack.CellStack` by :func:`rnnbench.experiment.build_stack`
  (as a run builds it: layers, direction, dropout, options; task-dependent options
  resolved without a task) at every grid point (T, batch, hidden, input size), in
  training mode, on a random input ``(B, T, input_size)``. Paths: ``fast``, the stack's
  ``forward`` (each cell's ``fused_forward`` where it has one); ``step``, the same with
  ``use_fused = False`` (``Cell.loop_forward``: one projection GEMM, then step by step);
  ``parallel`` / ``loop``, ``fast`` with the scan cells' ``scan`` option forced
  (:data:`rnnbench.scans.SCANS`; presets without one get no row); ``projection``, the
  floor: each cell's ``input_projection`` of all T steps alone (one GEMM, forward and
  backward), the work no way of running the recurrence avoids, so its ratio to ``step``
  bounds any speed-up. The preset's inter-layer dropout is kept (part of a training
  step's cost); references run with ``dropout=0``.
- **References**: what the cell class declares (``Cell.reference_modules``: the best existing
  implementation of the same or the closest layer), with the same input and hidden sizes,
  layers and direction. A time-first reference gets the input transposed once,
  outside the timing; a reference that cannot be built here is left out, with the
  cell's warning as a note. A cell that declares none gets no ratio.
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
  candidate is faster. The table shows the ``fwd+bwd`` ratio. ``ratio_to_loop_*``:
  the same paired ratio of each other path to the ``step`` path of the same stack
  (with ``step`` among ``--paths``): below 1 that path is faster than its own step loop.
- **Scaling in T**: ``per_step_scaling`` = time per step (``fwd+bwd`` median / T)
  over the same at the shortest T measured for that preset, path and size: 1 means
  linear cost in T, below 1 cheaper per step at longer T.
- **Throughput.** tokens/s = ``B·T / median time``.
- **GFLOP/s** = FLOPs / median time, with FLOPs = ``stack.flops_per_step()`` (the
  cells' own formula, summed over layers and directions; a multiply-add counts 2)
  ``× B × T`` for ``fwd``, and **3×** that for ``fwd+bwd`` (the usual convention:
  backward costs about twice the forward, gradients w.r.t. inputs and weights).
  Empty when a cell does not give its FLOPs, and for path ``projection``.
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
import json
import platform
import resource
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from .experiment import build_stack, cell_options
from .registry import CELLS
from .timing import InputProjections, Measured, OtherCpu, measure_interleaved, paired_ratio

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PATHS = ("fast", "step", "parallel", "loop", "projection")

# One row per measurement, in this order, in the CSV and the JSON.
COLUMNS = [
    "preset",           # config preset (conf/cell/<preset>.yaml)
    "cell",             # registry name of the cell class
    "path",             # fast (the cell's forward), step (use_fused=False: its loop), parallel / loop (scan forced), projection (the input GEMMs alone)
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
    "ratio_to_loop_fwd", "ratio_to_loop_fwd_bwd",  # paths but step: median of per-round time(path) / time(step)
    "per_step_scaling",  # fwd+bwd time per step over the same at the shortest T of this preset, path and size
    "device", "device_name", "torch_version", "threads", "dtype", "repeats", "warmup",
    "other_cpu",        # share of all CPUs used by other processes while this point ran (Linux; 0 = quiet machine)
    "note",
]


# --- modules ------------------------------------------------------------------------------
def resolve_preset(path: Path, seq_len: int) -> dict:
    """The preset as a plain dict, interpolations resolved with ``task.seq_len = seq_len``."""
    config = OmegaConf.create({"cell": OmegaConf.load(path), "task": {"seq_len": seq_len}})
    return OmegaConf.to_container(config.cell, resolve=True)


def build_candidates(preset: dict, paths: list[str], input_size: int, hidden: int, x: torch.Tensor) -> list[Measured]:
    """The preset's stack once per path: ``fast`` as built, ``step`` with ``use_fused = False``,
    ``parallel`` / ``loop`` with ``scan`` set so on every cell that has the option (none: no
    candidate), ``projection``: its input projections alone (:class:`InputProjections`)."""
    stack = build_stack(preset, input_size, hidden_size=hidden).to(device=x.device, dtype=x.dtype).train()
    candidates = []
    for path in paths:
        if path == "projection":
            candidates.append(Measured(path, InputProjections(copy.deepcopy(stack), x), x))
            continue
        module = stack if path == "fast" else copy.deepcopy(stack)
        for cell in module.cells:
            cell.use_fused = path != "step"
            if path in ("parallel", "loop") and hasattr(cell, "scan"):
                cell.scan = path
        if path in ("fast", "step") or any(hasattr(cell, "scan") for cell in module.cells):
            candidates.append(Measured(path, module, x))
    return candidates


def build_references(preset: dict, input_size: int, hidden: int, x: torch.Tensor) -> tuple[list[Measured], list[str]]:
    """What the preset's cell class declares (``Cell.reference_modules``), and notes (its warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        references = CELLS.get(preset["name"]).reference_modules(
            input_size, hidden, preset["num_layers"], preset["bidirectional"], cell_options(preset))
    x_time_first = x.transpose(0, 1).contiguous()
    measured = [Measured(ref.label, ref.module.to(device=x.device, dtype=x.dtype).train(),
                         x_time_first if ref.time_first else x) for ref in references]
    return measured, [f"{preset['name']}: {w.message}" for w in caught]


# --- one grid point ----------------------------------------------------------------------
def bench_point(preset_name: str, preset: dict, paths: list[str], seq_len: int, batch: int, hidden: int,
                input_size: int, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int,
                context: dict) -> tuple[list[dict], list[str]]:
    """All paths of one preset and its references at one grid point -> rows, notes."""
    torch.manual_seed(0)
    x = torch.randn(batch, seq_len, input_size, device=device, dtype=dtype)
    candidates = build_candidates(preset, paths, input_size, hidden, x)
    references, notes = build_references(preset, input_size, hidden, x)
    other_cpu = OtherCpu()
    other_cpu.start()
    with warnings.catch_warnings(record=True) as caught:  # printing a warning inside a timed call would be timed
        warnings.simplefilter("always")
        measure_interleaved(candidates + references, device, warmup, repeats)
    notes += sorted({f"{preset['name']}: {w.message}" for w in caught} - set(notes))
    share = other_cpu.share()
    tokens = batch * seq_len
    loop = next((c for c in candidates if c.label == "step"), None)
    rows = []
    for candidate in candidates:
        flops = candidate.module.flops_per_step()
        ms_fwd, ms_fwd_bwd = candidate.median_ms("fwd"), candidate.median_ms("fwd_bwd")
        with_loop = loop is not None and candidate is not loop
        base = {
            "preset": preset_name, "cell": preset["name"], "path": candidate.label,
            "seq_len": seq_len, "batch": batch, "hidden": hidden, "input_size": input_size,
            "num_layers": preset["num_layers"], "bidirectional": preset["bidirectional"],
            "ms_fwd": ms_fwd, "ms_fwd_min": candidate.min_ms("fwd"),
            "ms_fwd_bwd": ms_fwd_bwd, "ms_fwd_bwd_min": candidate.min_ms("fwd_bwd"),
            "tokens_per_s_fwd": tokens / (ms_fwd / 1e3), "tokens_per_s_fwd_bwd": tokens / (ms_fwd_bwd / 1e3),
            "flops_per_step": flops,
            "gflops_fwd": None if flops is None else flops * tokens / (ms_fwd / 1e3) / 1e9,
            "gflops_fwd_bwd": None if flops is None else 3 * flops * tokens / (ms_fwd_bwd / 1e3) / 1e9,
            "peak_mem_mb": None if candidate.peak_bytes is None else candidate.peak_bytes / 2**20,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "ratio_to_loop_fwd": paired_ratio(candidate.fwd, loop.fwd) if with_loop else None,
            "ratio_to_loop_fwd_bwd": paired_ratio(candidate.fwd_bwd, loop.fwd_bwd) if with_loop else None,
            "per_step_scaling": None,  # filled in by add_scaling once every T is measured
            **context, "other_cpu": share, "note": "; ".join(notes) or None,
        }
        compared = [(r.label, r.median_ms("fwd"), r.median_ms("fwd_bwd"), paired_ratio(candidate.fwd, r.fwd),
                     paired_ratio(candidate.fwd_bwd, r.fwd_bwd)) for r in references] or [(None,) * 5]
        for label, ref_fwd, ref_fwd_bwd, ratio_fwd, ratio_fwd_bwd in compared:
            rows.append({**base, "reference": label, "ref_ms_fwd": ref_fwd, "ref_ms_fwd_bwd": ref_fwd_bwd,
                         "ratio_fwd": ratio_fwd, "ratio_fwd_bwd": ratio_fwd_bwd})
    return [{column: row[column] for column in COLUMNS} for row in rows], notes


def add_scaling(rows: list[dict]) -> None:
    """``per_step_scaling`` of every row, in place: its time per step over that of the same
    preset, path and size (and reference row) at the shortest T measured."""
    def key(row: dict) -> tuple:
        return row["preset"], row["path"], row["batch"], row["hidden"], row["input_size"], row["reference"]

    shortest: dict[tuple, dict] = {}
    for row in rows:
        if key(row) not in shortest or row["seq_len"] < shortest[key(row)]["seq_len"]:
            shortest[key(row)] = row
    for row in rows:
        first = shortest[key(row)]
        row["per_step_scaling"] = (row["ms_fwd_bwd"] / row["seq_len"]) / (first["ms_fwd_bwd"] / first["seq_len"])


# --- output -------------------------------------------------------------------------------
def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=title)
    for header in ("preset", "path", "T", "B", "H", "ms fwd", "ms fwd+bwd", "tokens/s", "GFLOP/s",
                   "reference", "ratio", "vs loop", "per step"):
        table.add_column(header, justify="left" if header in ("preset", "path", "reference") else "right")
    for row in rows:
        table.add_row(row["preset"], row["path"], str(row["seq_len"]), str(row["batch"]), str(row["hidden"]),
                      fmt(row["ms_fwd"], ".1f"), fmt(row["ms_fwd_bwd"], ".1f"),
                      fmt(row["tokens_per_s_fwd_bwd"], ",.0f"), fmt(row["gflops_fwd_bwd"], ".1f"),
                      row["reference"] or "-", fmt(row["ratio_fwd_bwd"], ".2f"),
                      fmt(row["ratio_to_loop_fwd_bwd"], ".2f"), fmt(row["per_step_scaling"], ".2f"))
    Console(width=180).print(table)


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
        description="Time forward and forward+backward of cell presets against the implementations their cells "
                    "name as references (e.g. torch.nn modules), and against their own step loops.",
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
                        help="fast (the cell's forward), step (use_fused=False: its loop), parallel / loop (fast with "
                             "the scan cells' scan option forced), projection (the input GEMMs alone: the floor); "
                             "e.g. fast,step")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem: writes OUT.csv and OUT.json "
                             "(default results/speed/speed_<timestamp>)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    unknown_paths = [p for p in args.paths if p not in PATHS]
    if unknown_paths or not args.paths:
        parser.error(f"--paths: expected some of {', '.join(PATHS)}, got {','.join(args.paths)}")
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

    add_scaling(rows)
    title = (f"rnnbench-speed: {context['device']} ({context['device_name']}), torch {context['torch_version']}, "
             f"{context['threads']} threads, {args.dtype}, median of {args.repeats} (warmup {args.warmup}); "
             f"ratio = fwd+bwd time / reference's; vs loop = fast / step path; per step = time per step / that at "
             f"the shortest T; same process, interleaved")
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
