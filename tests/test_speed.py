"""Smoke test of the speed benchmark (``rnnbench-speed``): it runs, writes the documented
rows, and refuses unknown presets clearly. No timing assertions (CI machines are noisy)."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

import rnnbench.speed
import rnnbench.timing
from rnnbench.registry import CELLS
from rnnbench.speed import COLUMNS, main

TINY = ["--seq-len", "5", "--batch", "2", "--hidden", "8", "--input-size", "3", "--repeats", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One tiny run for gru and lstm, both paths: (csv rows, json rows)."""
    out = tmp_path_factory.mktemp("speed") / "bench"
    main(["--cells", "gru,lstm", "--paths", "fast,step", "--threads", "1", "--out", str(out), *TINY])
    with (out.parent / "bench.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        csv_rows = list(reader)
    json_rows = json.loads((out.parent / "bench.json").read_text())
    return csv_rows, json_rows


def test_one_row_per_preset_path_and_reference(outputs):
    csv_rows, json_rows = outputs
    assert [list(row) for row in json_rows] == [COLUMNS] * len(json_rows)
    found = {(row["preset"], row["path"], row["reference"]) for row in json_rows}
    assert found == {
        ("gru", "fast", "torch.nn.GRU"), ("gru", "step", "torch.nn.GRU"),
        ("lstm", "fast", "torch.nn.LSTM"), ("lstm", "step", "torch.nn.LSTM"),
    }
    assert len(csv_rows) == len(json_rows) == 4
    assert [row["preset"] for row in csv_rows] == [row["preset"] for row in json_rows]


def test_rows_carry_the_grid_and_the_machine(outputs):
    _, json_rows = outputs
    for row in json_rows:
        assert (row["seq_len"], row["batch"], row["hidden"], row["input_size"]) == (5, 2, 8, 3)
        assert row["device"] == "cpu" and row["threads"] == 1 and row["dtype"] == "float32"
        assert row["torch_version"] and row["repeats"] == 1 and row["warmup"] == 0
        assert row["peak_mem_mb"] is None  # not measurable per module on CPU (see the module docstring)


def test_times_throughput_and_ratios_are_positive(outputs):
    _, json_rows = outputs
    for row in json_rows:
        for key in ("ms_fwd", "ms_fwd_min", "ms_fwd_bwd", "ms_fwd_bwd_min", "tokens_per_s_fwd_bwd",
                    "gflops_fwd", "gflops_fwd_bwd", "ref_ms_fwd", "ref_ms_fwd_bwd", "ratio_fwd", "ratio_fwd_bwd",
                    "per_step_scaling"):
            value = row[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
        assert row["ms_fwd_min"] <= row["ms_fwd"]
        assert row["flops_per_step"] > 0  # GRU and LSTM give their FLOPs


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(SystemExit) as info:
        main(["--cells", "nonexistent", *TINY])
    message = str(info.value.code)
    assert "nonexistent" in message and "Known presets" in message
    for preset in ("gru", "lstm", "bigru"):
        assert preset in message


def test_fast_path_is_compared_with_its_own_loop(outputs):
    """``ratio_to_loop_*``: on the fast rows (paired with the step path of the same stack), not on the step rows."""
    _, json_rows = outputs
    for row in json_rows:
        for key in ("ratio_to_loop_fwd", "ratio_to_loop_fwd_bwd"):
            if row["path"] == "fast":
                assert isinstance(row[key], float) and row[key] > 0
            else:
                assert row[key] is None
    # one length only: every row is its own shortest T
    assert all(row["per_step_scaling"] == 1.0 for row in json_rows)


def test_scaling_over_lengths_and_declared_references(tmp_path):
    """Every new cell preset gets the references its class declares; ``per_step_scaling`` is
    1 at the shortest T and the ratio of times per step at the longer one."""
    out = tmp_path / "scaling"
    main(["--cells", "mingru,minlstm,qrnn,lru", "--threads", "1", "--out", str(out), *TINY[2:], "--seq-len", "5,10"])
    rows = json.loads((tmp_path / "scaling.json").read_text())
    assert {(row["preset"], row["reference"]) for row in rows} == {
        ("mingru", "torch.nn.GRU"), ("minlstm", "torch.nn.GRU"), ("minlstm", "torch.nn.LSTM"),
        ("qrnn", "torch.nn.LSTM"), ("lru", "torch.nn.LSTM")}
    for row in rows:
        first = next(r for r in rows if r["seq_len"] == 5 and
                     (r["preset"], r["path"], r["reference"]) == (row["preset"], row["path"], row["reference"]))
        expected = (row["ms_fwd_bwd"] / row["seq_len"]) / (first["ms_fwd_bwd"] / 5)
        assert row["per_step_scaling"] == pytest.approx(expected)


def test_scan_paths_force_the_scan_option_and_are_compared_with_the_step_loop(tmp_path, monkeypatch):
    """``--paths parallel,loop``: the fast path with every scan cell's ``scan`` forced (the
    stacks built carry it), each paired with the step loop; presets without a scan cell
    (GRU) get no such rows."""
    built = []
    original = rnnbench.speed.build_candidates

    def recording(*args):
        candidates = original(*args)
        built.extend(candidates)
        return candidates

    out = tmp_path / "paths"
    monkeypatch.setattr(rnnbench.speed, "build_candidates", recording)
    main(["--cells", "qrnn,gru", "--paths", "fast,step,parallel,loop,projection", "--threads", "1", "--out", str(out),
          *TINY])
    for candidate in (c for c in built if c.label != "projection"):
        scans = {cell.scan for cell in candidate.module.cells if hasattr(cell, "scan")}
        if candidate.label in ("parallel", "loop"):
            assert scans == {candidate.label}
        else:
            assert scans <= {"auto"}
    rows = json.loads((tmp_path / "paths.json").read_text())
    assert {(row["preset"], row["path"]) for row in rows} == {
        ("qrnn", "fast"), ("qrnn", "step"), ("qrnn", "parallel"), ("qrnn", "loop"), ("qrnn", "projection"),
        ("gru", "fast"), ("gru", "step"), ("gru", "projection")}
    for row in rows:
        assert (row["ratio_to_loop_fwd_bwd"] is None) == (row["path"] == "step")
        assert (row["gflops_fwd_bwd"] is None) == (row["path"] == "projection")


def test_projection_path_is_the_cells_input_projections_alone():
    """Path ``projection`` computes exactly each cell's ``input_projection`` of its own
    input, and its gradient reaches those weights and no recurrent one."""
    stack = rnnbench.speed.build_stack({"name": "gru", "num_layers": 2, "bidirectional": True, "dropout": 0.0},
                                       3, hidden_size=4)
    x = torch.randn(2, 5, 3)
    floor = rnnbench.timing.InputProjections(stack, x)
    assert [u.shape for u in floor.inputs] == [(5, 2, 3), (5, 2, 3), (5, 2, 8), (5, 2, 8)]
    expected = sum(cell.input_projection(u).sum() for cell, u in zip(stack.cells, floor.inputs))
    (total,) = floor(x)
    assert torch.allclose(total, expected)
    total.backward()
    touched = {name for name, p in floor.named_parameters() if p.grad is not None}
    assert touched and all("ih" in name for name in touched), touched


def test_speed_code_names_no_cell():
    """References come from ``Cell.reference_modules``: no registered cell name in the speed code."""
    for module in (rnnbench.speed, rnnbench.timing):
        source = Path(module.__file__).read_text()
        for name in CELLS.names():
            assert not re.search(rf"\b{name}\b", source, re.IGNORECASE), (module.__name__, name)
