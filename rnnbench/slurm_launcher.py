"""``hydra/launcher=slurm``: Hydra's submitit launcher, made to survive a real cluster.

Hydra instantiates launchers only from its ``hydra_plugins`` namespace, so the class Hydra
sees is ``hydra_plugins.rnnbench_slurm_launcher.SlurmLauncher``
(``rnnbench/hydra_plugin_path``, see :func:`rnnbench.protocol.register_with_hydra`), a
subclass of :class:`SlurmLauncher` here. Hydra imports every plugin module at start-up,
so this module imports nothing heavy until a sweep uses it.

What it adds to ``hydra_plugins.hydra_submitit_launcher``'s ``SlurmLauncher``:

- the sweep waits for every job and never stops at the first that fails: a job that
  ends without a result (cancelled, killed at its time limit, not requeued) is logged
  in one line with its SLURM state (``sacct``), and its record says so (``interrupted``
  if it was cancelled or killed while running, else ``failed``), so the end-of-sweep
  table covers every job and the command exits non-zero, as a local sweep does;
- ``sbatch``'s refusals (unknown partition, a request no node can satisfy) and a
  missing SLURM end the command with one ``rnnbench: error:`` line (exit code 2)
  naming the request and the partitions there are; nothing is left queued then;
- every job runs inside :func:`rnnbench.slurm.watching_signals`: SIGTERM and SIGUSR2
  stop training at a step boundary with ``last.ckpt`` saved, and after SIGUSR2 the
  job is requeued through submitit's protocol (its ``checkpoint`` resubmits this same
  call), so the requeued job resumes from ``last.ckpt`` in the same run directory;
- ``gpus_per_node: null`` asks for one GPU per process with ``trainer.accelerator=gpu``
  and none on the CPU, and ``trainer.threads`` (when not set) becomes the job's
  ``cpus_per_task``, so torch uses the cores SLURM gave it, not every core of the node.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from .errors import ConfigError
from .record import SUMMARY_FILE

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

    INSTALLED = True
except ImportError:  # without `pip install rnnbench[slurm]` this is no plugin (and hydra/launcher=slurm is refused)
    SubmititSlurmLauncher, INSTALLED = object, False

log = logging.getLogger(__name__)

# SLURM job states after which no result file will come (the job did not end by itself).
# Pending reasons that mean the request exceeds the partition's configuration: no job
# with them starts until an administrator changes the cluster (squeue's REASON codes).
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed")
KILLED_STATES = ("CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def check_installed(argv: list[str]) -> None:
    """``hydra/launcher=slurm`` needs Hydra's submitit launcher (the ``slurm`` extra)."""
    if not INSTALLED and "hydra/launcher=slurm" in argv:
        raise ConfigError("hydra/launcher=slurm needs Hydra's submitit launcher (hydra-submitit-launcher), which is "
                          "not installed: pip install 'rnnbench[slurm]'.")


def rebuild(state: dict) -> "SlurmLauncher":
    """Unpickle a launcher inside a SLURM job. Its class lives in Hydra's namespace, which
    holds rnnbench's plugin folder only once rnnbench is imported: unpickling this
    function imports rnnbench first (see :meth:`SlurmLauncher.__reduce__`)."""
    from hydra_plugins.rnnbench_slurm_launcher import SlurmLauncher as Plugin

    launcher = Plugin.__new__(Plugin)
    launcher.__dict__.update(state)
    return launcher


def fail(message: str) -> None:
    """End the command with one line (Hydra would print a traceback for an exception)."""
    print(f"rnnbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class SlurmLauncher(SubmititSlurmLauncher):
    """See the module docstring."""

    def __reduce__(self):
        return rebuild, (self.__dict__,)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """One sweep job, on a compute node."""
        from . import slurm

        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        with slurm.watching_signals():
            try:
                return super().__call__(*args, **kwargs)
            except slurm.Stopped as stop:
                print(f"rnnbench: {stop.reason}", file=sys.stderr)
                if stop.requeue and callable(requeue):
                    requeue(signal.SIGUSR2, None)  # dumps self.checkpoint(...), `scontrol requeue`, exits
                raise

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs as one SLURM array, wait for all, and return their results."""
        import submitit

        params = self._queue_parameters()
        folder, max_num_timeout = params.pop("submitit_folder"), params.pop("max_num_timeout")
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
        except RuntimeError as exc:  # submitit found no srun
            fail(f"hydra/launcher=slurm needs SLURM's sbatch and srun on PATH ({exc}). Run the sweep where SLURM "
                 f"is installed (a cluster's login node), or use hydra/launcher=local.")
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": value
                                      for key, value in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        threads = self._threads_override(params)
        jobs_args = [([*overrides, *threads], "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                      _singleton_state()) for i, overrides in enumerate(job_overrides)]
        for args in jobs_args:
            log.info("\t#%d : %s", args[2], " ".join(args[0]))
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's errors; we say it in one line
                jobs = executor.map_array(self, *zip(*jobs_args))
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as exc:
            fail(self._refusal(str(exc), params))
        log.info("submitted %d job(s) to SLURM: %s", len(jobs), ", ".join(job.job_id for job in jobs))
        self._refuse_unrunnable({job.job_id.split("_")[0] for job in jobs}, params)
        return [self._outcome(job, args[0], args[2]) for job, args in zip(jobs, jobs_args)]

    def _queue_parameters(self) -> dict[str, Any]:
        """The launcher's settings, checked; ``gpus_per_node: null`` resolved from the trainer."""
        params = dict(self.params)
        params.pop("_target_", None)
        for key in ("nodes", "tasks_per_node"):
            value = params.get(key)
            if not isinstance(value, int) or value < 1:
                fail(f"hydra.launcher.{key}={value!r} is invalid: expected an integer >= 1 (it follows "
                     f"trainer.{'num_nodes' if key == 'nodes' else 'devices'}: set that to the number of "
                     f"{'machines' if key == 'nodes' else 'processes per machine'} the job should use).")
        if params.get("gpus_per_node") is None and OmegaConf.select(self.config, "trainer.accelerator") in ("gpu",
                                                                                                           "cuda"):
            params["gpus_per_node"] = params["tasks_per_node"]
        return params

    def _threads_override(self, params: dict[str, Any]) -> list[str]:
        """``trainer.threads=<cpus_per_task>`` when the sweep leaves torch's threads unset."""
        if OmegaConf.select(self.config, "trainer.threads") is None and params.get("cpus_per_task"):
            return [f"trainer.threads={params['cpus_per_task']}"]
        return []

    def _refusal(self, stderr: str, params: dict[str, Any]) -> str:
        """sbatch's error lines as one line, with the request and the partitions there are."""
        errors = [line.split("error:", 1)[1].strip() for line in stderr.splitlines() if "error:" in line]
        return (f"SLURM refused the sweep's jobs (nothing was submitted): sbatch: "
                f"{'; '.join(errors) or stderr.strip()}. {_request_and_partitions(params)}")

    def _refuse_unrunnable(self, job_ids: set[str], params: dict[str, Any]) -> None:
        """Clusters that do not enforce partition limits at submission queue a request no
        node can satisfy; it would pend forever (reason e.g. PartitionConfig). Such jobs
        are cancelled at once and the command ends with one line."""
        queue = subprocess.run(["squeue", "-h", "-o", "%i %r", "-j", ",".join(sorted(job_ids))],
                               capture_output=True, text=True, timeout=60)
        reasons = {line.split()[1] for line in queue.stdout.splitlines() if len(line.split()) > 1}
        never = sorted(reasons & set(NEVER_STARTS))
        if never:
            subprocess.run(["scancel", *sorted(job_ids)], capture_output=True, timeout=60)
            fail(f"SLURM queued the sweep's jobs but can never start them (pending reason {', '.join(never)}: "
                 f"the request exceeds what the partition allows), so they were cancelled "
                 f"(jobs {', '.join(sorted(job_ids))}). {_request_and_partitions(params)}")

    def _outcome(self, job, overrides: list[str], num: int) -> JobReturn:
        """Wait for ``job``; its result, or (it ended without one) a record saying why."""
        import submitit

        job.wait()  # until its result file appears or sacct says it ended
        state = job.state.split()[0] if job.state else "UNKNOWN"
        detail = f"log: {job.paths.stderr}"
        if job.paths.result_pickle.exists() or state not in KILLED_STATES:
            try:
                return job.results()[0]  # waits a little for a result file late on a network file system
            except submitit.core.utils.UncompletedJobError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "----" not in line]
                detail = f"{lines[-1] if lines else exc}; {detail}"
        job_dir = self._settle_record(job.job_id, state, detail, overrides, num)
        log.error("job %d (SLURM %s) ended %s without a result (%s); its record: %s", num, job.job_id, state,
                  detail, job_dir)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)

    def _settle_record(self, job_id: str, state: str, detail: str, overrides: list[str], num: int) -> Path:
        """Make the record of a job that ended without a result say so: a run killed while
        ``running`` becomes ``interrupted`` (it resumes from ``last.ckpt``); a job that left
        no record gets one (``interrupted`` if cancelled, else ``failed``). Returns its folder."""
        from . import store, sweep
        from .cli import refused_record
        from .record import RunRecord

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        hydra_config = HydraConfig.instance()
        saved = hydra_config.cfg
        hydra_config.set_config(cfg)  # ${hydra:runtime.choices...} of this job, as the job resolved them
        try:
            job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            presets = dict(cfg.hydra.runtime.choices)
        finally:
            hydra_config.cfg = saved
        what = f"SLURM job {job_id} ended {state}"
        if (job_dir / SUMMARY_FILE).is_file():
            record = RunRecord.read(job_dir)
            if record.status == "running":
                record.status, record.error = "interrupted", f"{what} while running ({detail})"
                record.write(job_dir)
        elif not (job_dir / store.REUSED_FILE).is_file():
            task_cfg = copy.deepcopy(cfg)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            record = refused_record(job_dir, task_cfg, f"{what} before the run started ({detail})", presets,
                                    status="interrupted" if state == "CANCELLED" else "failed")
        else:
            return job_dir
        sweep.job_done(Path(str(cfg.hydra.sweep.dir)), str(num), record.status)
        return job_dir


def _request_and_partitions(params: dict[str, Any]) -> str:
    """What the sweep asked SLURM for, and what the partitions here offer (``sinfo``)."""
    asked = ", ".join(f"{key}={params.get(key)}" for key in ("partition", "nodes", "tasks_per_node", "cpus_per_task",
                                                               "mem_gb", "gpus_per_node", "timeout_min"))
    try:
        found = subprocess.run(["sinfo", "-h", "-o", "%P (%c CPUs, %m MB per node, time limit %l)"],
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
        partitions = "; ".join(line.strip() for line in found if line.strip()) or "none found"
    except (OSError, subprocess.SubprocessError):
        partitions = "unknown (sinfo failed)"
    return f"The request (hydra.launcher.*): {asked}. Partitions here: {partitions}; fit hydra.launcher.* to one."


def _singleton_state() -> dict:
    from hydra.core.singleton import Singleton

    return Singleton.get_state()
