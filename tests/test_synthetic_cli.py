"""The new synthetic tasks through the real command line: a formal language, selective
copying and MQAR in one sweep with diagnostics and length generalisation, and a formal
language under DDP on two CPU processes."""

from __future__ import annotations

import json

import pytest

from helpers.cli import run_cli, summaries

SMALL = ["trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.progress_bar=none", "trainer.threads=1",
         "cell.hidden_size=16", "task.seq_len=16", "task.batch_size=16", "task.val_size=32", "task.test_size=32"]


@pytest.mark.slow
def test_sweep_with_diagnostics_and_lengths(workdir):
    proc = run_cli(["-m", "task=parity_check,selective_copy,mqar", "diagnostics=true", "task.eval_lengths=[20]",
                    *SMALL], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["task"]: r for r in summaries(workdir / "results")}
    assert set(records) == {"parity_check", "selective_copy", "mqar"}
    for task, record in records.items():
        assert record["status"] == "finished" and record["steps"] == 20
        assert record["metric"] == "acc" and 0 <= record["metrics"]["test"]["acc"] <= 1
        assert record["task_params"]["seq_len"] == 16 and "acc" in record["baseline"]
        at_20 = record["metrics"]["length_generalisation"]["20"]
        assert set(at_20) >= {"acc", "loss", "solved", "baseline"}
        diagnostics = json.loads((workdir / record["run_dir"] / record["diagnostics"]).read_text())  # (an absolute run_dir wins)
        assert diagnostics["grad_norm"] and "aligned_first_marker" in diagnostics  # every new task marks an event
    # The formal language's score is over lengths 17..100 (the preset's max_test_len), its
    # per-length test at 20 alone; MQAR's and selective copying's at T=20 are rebuilt tasks.
    assert records["parity_check"]["task_params"]["max_test_len"] == 100
    assert records["parity_check"]["baseline"]["acc"] == 0.5


@pytest.mark.slow
def test_formal_language_under_ddp(workdir):
    proc = run_cli(["trainer=ddp_cpu", "task=even_pairs", "task.max_test_len=20", *SMALL], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["status"] == "finished" and record["world_size"] == 2
    assert 0 <= record["metrics"]["test"]["acc"] <= 1
