"""The logger group: TensorBoard and MLflow beside metrics.csv, with the same numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.cli import TINY, compose_config
from rnnbench.run import run_job


def last_validation(run_dir) -> float:
    rows = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/mse"])
    return float(rows["val/mse"].iloc[-1])


def test_tensorboard_logger_writes_the_same_validation_metrics(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="reading TensorBoard files needs the tensorboard package")
    cfg = compose_config([*TINY, "logger=tensorboard", f"results_dir={tmp_path}"], resolved=False)
    run_job(cfg, tmp_path / "run")
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("val/mse")
    assert [s.step for s in scalars] == [10, 20]  # optimiser steps, as metrics.csv and the record
    assert scalars[-1].value == pytest.approx(last_validation(tmp_path / "run"), rel=1e-6)


def test_mlflow_logger_writes_a_file_store_in_the_run_directory(tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow logger needs mlflow (pip install mlflow-skinny)")
    cfg = compose_config([*TINY, "logger=mlflow", f"results_dir={tmp_path}"], resolved=False)
    record = run_job(cfg, tmp_path / "run").record
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "rnnbench"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/mse")
    assert sorted(m.step for m in history) == [10, 20]
    assert max(history, key=lambda m: m.step).value == pytest.approx(last_validation(tmp_path / "run"), rel=1e-6)
    assert run.data.metrics["test/mse"] == pytest.approx(record.metrics["test"]["mse"], rel=1e-6)
