"""Sweeps on a real SLURM cluster (``hydra/launcher=slurm``): a single-node cluster on
localhost (tests/helpers/slurm.py) runs every job; records, failures, DDP through
``srun``, requeue after SIGUSR2, ``scancel``, and the scheduler's refusals.

Jobs signalled mid-training use the task below: ``RNNBENCH_TEST_PAUSE=STEP:FILE`` makes
the first run that reaches training step STEP write FILE and wait there for SIGTERM or
SIGUSR2 (passing it on to rnnbench's handler), so the test signals a job at a known step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from helpers.cli import TINY, compose_config, run_cli, summaries
from helpers.slurm import cluster  # noqa: F401  (the session's SLURM cluster: a fixture, found here by pytest)
from rnnbench import slurm, store
from rnnbench.checkpoints import read_checkpoint
from rnnbench.record import RunRecord
from rnnbench.report import build_report
from rnnbench.run import run_job
from rnnbench.store import load_records
from test_faults import FAULT_TASK

SLURM_TASK = '''
import itertools
import os
import signal
import time
from pathlib import Path

from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask


def wait_for_signal(marker: str, timeout: float = 120) -> None:
    got = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}

    def handler(signum, frame):
        got.append(signum)
        if callable(previous[signum]):
            previous[signum](signum, frame)

    for s in previous:
        signal.signal(s, handler)
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    for s, h in previous.items():
        signal.signal(s, h)


@register_task("slurm_adding")
class SlurmAdding(AddingTask):
    """The adding task, with SLURM's signals at known training steps (counted from 1)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.training_steps = itertools.count(1)

    def loss_and_metrics(self, model, batch):
        step = next(self.training_steps) if model.training else None
        if step is not None and os.environ.get("RNNBENCH_TEST_SIGNAL") == str(step):  # as SLURM would, to itself
            os.kill(os.getpid(), signal.SIGUSR2)
        pause, _, marker = os.environ.get("RNNBENCH_TEST_PAUSE", "").partition(":")
        if step is not None and pause and step == int(pause) and not Path(marker).exists():
            wait_for_signal(marker)
        return super().loss_and_metrics(model, batch)
'''

# One CPU and 1 GB per job: two jobs at a time on a 2-core machine.
QUEUE = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=5"]
UNFINISHED = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED")  # sacct's states of a live job
PAUSE_STEP = 12  # between the validations at steps 10 and 20: the saved state is the signal's, not a validation's


@pytest.fixture(scope="session")
def slurm_plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("slurm_plugin") / "slurm_task.py"
    path.write_text(SLURM_TASK)
    return path


@pytest.fixture(scope="session")
def fault_plugin(tmp_path_factory):
    """test_faults' task with ``task.fail_at_step``; loaded by command lines only (test_faults
    loads its own copy in this process)."""
    path = tmp_path_factory.mktemp("slurm_faults") / "faults.py"
    path.write_text(FAULT_TASK)
    return path


@pytest.fixture
def jobs(slurm_plugin):
    """The overrides of a tiny job of the signalling task (30 steps, validations every 10)."""
    return [f"plugins=[{slurm_plugin}]", "task.name=slurm_adding", *TINY, "trainer.max_steps=30"]


@pytest.fixture(scope="module")
def reference(slurm_plugin, tmp_path_factory):
    """The uninterrupted run of ``jobs``, in this process."""
    root = tmp_path_factory.mktemp("reference")
    overrides = [f"plugins=[{slurm_plugin}]", "task.name=slurm_adding", *TINY, "trainer.max_steps=30",
                 "trainer.threads=1", f"results_dir={root}"]
    record = run_job(compose_config(overrides, resolved=False), root / "run").record
    assert record.status == "finished" and record.steps == 30
    return record.to_dict()


def sacct(cluster, job_id: str, *options: str) -> list[dict]:
    """SLURM's accounting rows of a job (all its array tasks / steps; ``options`` name a
    ``State`` column) once no job is left in the queue and the accounting database has
    caught up (slurmctld reports a job's end to slurmdbd a moment after squeue drops it),
    as dicts; printed too."""
    cluster.wait_until_idle()
    deadline = time.monotonic() + 60
    while True:
        out = cluster.run("sacct", "-j", job_id.split("_")[0], "--parsable2", *options).stdout
        header, *lines = out.strip().splitlines()
        rows = [dict(zip(header.split("|"), line.split("|"))) for line in lines]
        if not any(row["State"] in UNFINISHED for row in rows) or time.monotonic() > deadline:
            print(out)
            return rows
        time.sleep(0.5)


def wait_for_pause(marker, results, sweep) -> dict:
    """The record of the run paused at PAUSE_STEP (the CLI ``sweep`` still running)."""
    deadline = time.monotonic() + 180
    while not marker.exists():
        if sweep.done() or time.monotonic() > deadline:
            proc = sweep.result()
            pytest.fail(f"the job never paused (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        time.sleep(0.2)
    (record,) = summaries(results)
    return record


def start_requeued_now(cluster, job_id: str, run_dir) -> RunRecord:
    """SLURM holds a requeued job back for two minutes (pending reason BeginTime); let it
    start as soon as it is requeued, with a limit it will not reach, to keep the test short.
    Returns the run's record as the stopped job left it."""
    deadline = time.monotonic() + 120
    while cluster.run("squeue", "-h", "-j", job_id, "-o", "%r").stdout.strip() != "BeginTime":
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.2)
    stopped = RunRecord.read(run_dir)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", "TimeLimit=5")
    return stopped


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_runs_every_job_through_slurm_and_records_the_failed_one(cluster, fault_plugin, workdir):
    sweep = ["-m", *QUEUE, "hydra.launcher.array_parallelism=1", f"plugins=[{fault_plugin}]", "task.name=faulty_adding",
             *TINY, "trainer.max_steps=6", "trainer.val_check_interval=3", "+task.fail_at_step=null,3"]
    started = time.monotonic()
    proc = run_cli(sweep, workdir, env=cluster.env)
    print(f"sweep of 2 jobs through SLURM: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed, as a local sweep would say
    assert "submitted 2 job(s) to SLURM" in proc.stdout + proc.stderr
    found = summaries(workdir / "results")
    print("records:", [(r["slurm_job_id"], r["status"], r["error"]) for r in found])
    assert sorted(r["status"] for r in found) == ["failed", "finished"]
    assert {r["error"] for r in found if r["status"] == "failed"} == {"RuntimeError: injected fault"}
    array = found[0]["slurm_job_id"].split("_")[0]
    assert sorted(r["slurm_job_id"] for r in found) == [f"{array}_0", f"{array}_1"]
    assert all(r["device"]["torch_threads"] == 1 for r in found)  # trainer.threads follows cpus_per_task

    tasks = sacct(cluster, array, "-X", "-o", "JobID,State,ExitCode,Start,End")
    assert [row["State"] for row in tasks] == ["COMPLETED"] * 2  # a failed run is recorded; its job ends well
    first, second = sorted(tasks, key=lambda row: row["Start"])
    assert second["Start"] >= first["End"]  # array_parallelism=1: one at a time, though both CPUs were free

    sweep_dir = next((workdir / "results" / "sweeps").glob("*/*"))
    assert f"rnnbench: 2 runs in {sweep_dir.relative_to(workdir)}" in proc.stdout  # the end-of-sweep table
    report = build_report(sweep_dir, workdir / "report", plots=False)
    assert report.status_counts == "1 finished, 1 failed"


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_task_job_trains_with_ddp_through_srun_as_a_local_ddp_cpu_run(cluster, workdir):
    ddp = [*TINY, "trainer=ddp_cpu", "trainer.threads=1"]
    proc = run_cli(["-m", *QUEUE, *ddp], workdir, env=cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")  # rank 0 alone writes a record
    job_id = record["slurm_job_id"]
    steps = {row["JobID"]: row for row in sacct(cluster, job_id, "-o", "JobID,State,NTasks,AllocCPUS")}
    assert steps[f"{job_id}.0"]["NTasks"] == "2" and steps[job_id]["State"] == "COMPLETED"
    submitit = next((workdir / "results").rglob(f".submitit/{job_id}"))
    assert sorted(p.name for p in submitit.glob("*_result.pkl")) == [f"{job_id}_0_result.pkl",
                                                                     f"{job_id}_1_result.pkl"]
    assert record["world_size"] == 2 and record["status"] == "finished"

    local = run_cli([*ddp, "results_dir=local"], workdir)  # two ranks started by rnnbench itself
    assert local.returncode == 0, local.stderr[-3000:]
    (reference,) = summaries(workdir / "local")
    print("through srun:", record["metrics"]["test"], " local ddp_cpu:", reference["metrics"]["test"])
    assert reference["world_size"] == 2 and reference["slurm_job_id"] is None
    assert record["metrics"] == reference["metrics"]


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_signalled_before_its_time_limit_is_requeued_and_resumes_exactly(cluster, jobs, workdir, reference):
    """``scancel --signal=USR2`` sends what SLURM sends ``signal_delay_s`` before the time
    limit (and what many clusters send to preempt), at a moment the test chooses. (Letting
    slurmctld send it by cutting the running job's limit was tried and dropped: whether the
    signal or the limit comes first then depends on the machine's timing.)"""
    marker = workdir / "paused"
    env = {**cluster.env, "RNNBENCH_TEST_PAUSE": f"{PAUSE_STEP}:{marker}"}
    with ThreadPoolExecutor(1) as pool:
        sweep = pool.submit(run_cli, ["-m", *QUEUE, "hydra.launcher.signal_delay_s=40", *jobs], workdir, env)
        paused = wait_for_pause(marker, workdir / "results", sweep)
        cluster.run("scancel", "--signal=USR2", paused["slurm_job_id"])
        stopped = start_requeued_now(cluster, paused["slurm_job_id"], workdir / paused["run_dir"])
        proc = sweep.result(timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print("before the requeue:", {k: getattr(stopped, k) for k in ("status", "steps", "error", "slurm_restarts")})
    assert stopped.status == "interrupted" and stopped.steps == PAUSE_STEP
    assert stopped.error == (f"stopped by SIGUSR2 (time limit near) at step {PAUSE_STEP}: checkpoints/last.ckpt "
                             f"saved; the job is requeued and resumes from there")
    (record,) = summaries(workdir / "results")
    incarnations = sacct(cluster, record["slurm_job_id"], "-X", "--duplicates", "-o", "JobID,State,Start,End")
    assert [row["State"] for row in incarnations] == ["REQUEUED", "COMPLETED"]
    print("uninterrupted:", reference["metrics"]["test"], " requeued:", record["metrics"]["test"])
    assert record["status"] == "finished" and record["steps"] == 30
    assert (workdir / record["run_dir"]).resolve() == (workdir / paused["run_dir"]).resolve()  # the same folder
    assert record["config_hash"] == paused["config_hash"] == reference["config_hash"]
    assert record["resumed_from_step"] == PAUSE_STEP and record["slurm_restarts"] == 1
    assert record["metrics"] == reference["metrics"]
    curves = pd.read_csv(workdir / record["run_dir"] / "metrics.csv")  # nothing lost, nothing twice
    pd.testing.assert_frame_equal(curves, pd.read_csv(workdir / reference["run_dir"] / "metrics.csv"))


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True])
def test_a_cancelled_job_is_recorded_interrupted_and_the_rerun_resumes_it(cluster, jobs, workdir, reference,
                                                                        monkeypatch, kill):
    """``scancel``: SIGTERM, last.ckpt saved at the step it arrives; ``kill``: SIGKILL to the
    run's process (no chance to save, as from the OOM killer), resumed from the last validation."""
    marker = workdir / "paused"
    env = {**cluster.env, "RNNBENCH_TEST_PAUSE": f"{PAUSE_STEP}:{marker}"}
    with ThreadPoolExecutor(1) as pool:
        sweep = pool.submit(run_cli, ["-m", *QUEUE, *jobs], workdir, env)
        paused = wait_for_pause(marker, workdir / "results", sweep)
        if kill:
            os.kill(int(marker.read_text()), signal.SIGKILL)  # the paused process wrote its pid there
        else:
            cluster.run("scancel", paused["slurm_job_id"])
        first = sweep.result(timeout=300)
    assert first.returncode == 1, first.stderr[-3000:]
    (state,) = [row["State"] for row in sacct(cluster, paused["slurm_job_id"], "-X", "-o", "JobID,State")]
    assert f"(SLURM {paused['slurm_job_id']}) ended {state.split()[0]}" in first.stdout + first.stderr
    (stopped,) = summaries(workdir / "results")
    print(f"SLURM state {state}; the record after the sweep:", {k: stopped[k] for k in ("status", "steps", "error")})
    assert stopped["status"] == "interrupted"
    if kill:
        saved_at = 10  # the validation before PAUSE_STEP
        assert stopped["error"].startswith(f"SLURM job {paused['slurm_job_id']} ended {state.split()[0]} while running")
    else:
        saved_at = PAUSE_STEP
        assert state.startswith("CANCELLED") and stopped["steps"] == PAUSE_STEP
        assert stopped["error"].startswith(f"stopped by SIGTERM (scancel or preemption) at step {PAUSE_STEP}")
    assert read_checkpoint(workdir / stopped["run_dir"] / "checkpoints" / "last.ckpt")["global_step"] == saved_at

    again = run_cli(["-m", *QUEUE, *jobs], workdir, env=cluster.env)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    (record,) = summaries(workdir / "results")  # one run, gone on in its own directory
    run_dir = (workdir / stopped["run_dir"]).resolve()
    assert (workdir / record["run_dir"]).resolve() == run_dir and record["status"] == "finished"
    assert record["resumed_from_step"] == saved_at and record["metrics"] == reference["metrics"]
    pointer = next((workdir / "results").rglob(store.REUSED_FILE))
    assert (workdir / json.loads(pointer.read_text())["run_dir"]).resolve() == run_dir
    monkeypatch.chdir(workdir)  # records name their folders relative to where the sweep ran, as a user reads them
    assert len(load_records("results")) == 1  # each run once, for the whole results root
    assert build_report(pointer.parent.parent, workdir / "report", plots=False).status_counts == "1 finished"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("request_, says", [
    ("hydra.launcher.partition=nope", "SLURM refused the sweep's jobs (nothing was submitted): sbatch: invalid "
                                      "partition specified: nope; Batch job submission failed: Invalid partition"),
    ("hydra.launcher.mem_gb=100000", "SLURM refused the sweep's jobs (nothing was submitted): sbatch: Memory "
                                     "specification can not be satisfied"),
    ("hydra.launcher.cpus_per_task=512", "SLURM queued the sweep's jobs but can never start them (pending reason "
                                         "PartitionConfig"),
])
def test_the_scheduler_refusing_a_sweep_is_one_line(cluster, workdir, request_, says):
    proc = run_cli(["-m", *QUEUE, request_, *TINY], workdir, env=cluster.env)
    print(proc.stderr)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"rnnbench: error: {says}") and proc.stderr.count("\n") == 1
    assert "Partitions here: debug* (" in proc.stderr
    assert not list(workdir.rglob("summary.json"))
    assert cluster.run("squeue", "-h").stdout == ""  # nothing left queued


@pytest.mark.slow
def test_a_sweep_for_slurm_without_slurm_is_one_line(workdir):
    path = os.path.dirname(sys.executable)  # no srun or sbatch on this PATH
    proc = run_cli(["-m", *QUEUE, *TINY], workdir, env={"PATH": path})
    assert proc.returncode == 2
    assert proc.stderr.startswith("rnnbench: error: hydra/launcher=slurm needs SLURM's sbatch and srun on PATH")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("stop_at", [10, 13])  # at a validation step; between two
def test_a_run_stopped_by_a_slurm_signal_resumes_to_the_same_numbers(stop_at, slurm_plugin, tmp_path, monkeypatch):
    """In this process, no cluster: the task sends SIGUSR2 to its own process during step ``stop_at``."""
    overrides = [f"plugins=[{slurm_plugin}]", "task.name=slurm_adding", *TINY, "trainer.max_steps=20",
                 "trainer.threads=1", "cell=stacked_gru", "cell.num_layers=2"]  # dropout: the random state matters
    uninterrupted = run_job(compose_config([*overrides, f"results_dir={tmp_path / 'a'}"], resolved=False),
                            tmp_path / "a" / "run").record
    cfg = compose_config([*overrides, f"results_dir={tmp_path / 'b'}"], resolved=False)
    monkeypatch.setenv("RNNBENCH_TEST_SIGNAL", str(stop_at))
    with slurm.watching_signals(), pytest.raises(slurm.Stopped) as stopped:
        run_job(cfg, tmp_path / "b" / "run")
    assert stopped.value.requeue and f"at step {stop_at}:" in stopped.value.reason
    monkeypatch.delenv("RNNBENCH_TEST_SIGNAL")
    record = RunRecord.read(tmp_path / "b" / "run")
    assert record.status == "interrupted" and record.error == stopped.value.reason
    resumed = run_job(cfg, tmp_path / "b" / "unused").record
    assert resumed.resumed_from_step == stop_at and resumed.metrics == uninterrupted.metrics


def test_a_sweep_for_slurm_without_the_slurm_extra_is_one_line(monkeypatch, capsys, workdir):
    """Without hydra-submitit-launcher (``pip install rnnbench[slurm]``), before Hydra composes anything."""
    from rnnbench import cli, slurm_launcher

    monkeypatch.setattr(slurm_launcher, "INSTALLED", False)
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-m", *QUEUE, *TINY])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("rnnbench: error: hydra/launcher=slurm needs Hydra's submitit launcher "
                                       "(hydra-submitit-launcher), which is not installed: pip install "
                                       "'rnnbench[slurm]'.\n")
    assert not any(workdir.iterdir())  # nothing written


@pytest.mark.parametrize("trainer, gpus", [(["trainer=cpu"], None), (["trainer=gpu"], 1),
                                           (["trainer=ddp", "trainer.devices=4"], 4)])
def test_slurm_asks_for_one_gpu_per_process_only_on_gpus(trainer, gpus):
    """``gpus_per_node: null`` follows the trainer (no GPU cluster here: the request, not a run)."""
    from omegaconf import OmegaConf

    from hydra_plugins.rnnbench_slurm_launcher import SlurmLauncher

    cfg = compose_config(["hydra/launcher=slurm", *trainer], resolved=False, hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = SlurmLauncher(**params)
    launcher.config = cfg
    queue = launcher._queue_parameters()
    assert queue["gpus_per_node"] == gpus and queue["tasks_per_node"] == (gpus or 1)
