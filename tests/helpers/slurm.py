"""A real single-node SLURM cluster on localhost, for tests: ``munged``, a MariaDB server,
``slurmdbd`` (job accounting: submitit polls job states with ``sacct``, which reads the
accounting database), ``slurmctld`` and ``slurmd``, each in its own session, with every
file (configs, keys, sockets, state, logs) in one private folder and every port chosen
free, so that nothing is shared with a system SLURM or another test session.

    cluster = LocalCluster(folder)
    cluster.start()              # returns once the node is idle
    cluster.env                  # SLURM_CONF: what sbatch, sacct, srun ... need
    cluster.stop()               # cancels every job, stops every daemon

or, in a test module, the session fixture :func:`cluster` (``from helpers.slurm import
cluster``; conftest does not import this module). It skips, saying why, where SLURM is not
installed, and fails instead when ``RNNBENCH_REQUIRE_SLURM`` is set (CI installs SLURM).

The node has this machine's CPUs and memory as ``slurmd -C`` reports them. Packages
(Debian): ``slurm-wlm slurmdbd munge mariadb-server``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Programs the cluster runs, and the Debian packages that hold them.
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sacct", "squeue", "scancel", "scontrol", "sinfo", "sacctmgr")
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
PARTITION = "debug"
# A few MiB of MariaDB files instead of ~110 MiB (the default redo log alone is 96 MiB).
SMALL_DATABASE = ("--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M")


def missing_programs() -> list[str]:
    """The programs of :data:`DAEMONS` and :data:`CLIENTS` not found on PATH (or in sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]


def _program(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=path) or name


def _free_ports(count: int) -> list[int]:
    """Ports free now on 127.0.0.1 (held together while choosing, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_hardware() -> dict[str, str]:
    """This machine as slurmd sees it: ``CPUs``, ``Boards``, ``SocketsPerBoard``,
    ``CoresPerSocket``, ``ThreadsPerCore``, ``RealMemory`` (``slurmd -C``)."""
    out = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, timeout=60, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {key: fields[key] for key in keys if key in fields}


def _auth(cluster: "LocalCluster") -> list[str]:
    return ["AuthType=auth/munge", f"AuthInfo=socket={cluster.munge_socket}"]


def slurm_conf(cluster: "LocalCluster") -> list[str]:
    """The lines of ``slurm.conf``: one node (this machine's CPUs and memory) in one
    partition, every file in the cluster's folder, accounting through slurmdbd."""
    logs, run, folder = cluster.folder / "log", cluster.folder / "run", cluster.folder
    return [
        f"ClusterName={cluster.name}",
        f"SlurmctldHost={cluster.node}(127.0.0.1)",
        f"SlurmctldPort={cluster.ctld_port}",
        f"SlurmdPort={cluster.slurmd_port}",
        f"SlurmUser={cluster.user}",
        f"SlurmdUser={cluster.user}",
        *_auth(cluster),
        "CredType=cred/munge",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={run / 'slurmctld.pid'}",
        f"SlurmdPidFile={run / 'slurmd.pid'}",
        f"SlurmctldLogFile={logs / 'slurmctld.log'}",
        f"SlurmdLogFile={logs / 'slurmd.log'}",
        f"PlugStackConfig={folder / 'etc' / 'plugstack.conf'}",
        "ProctrackType=proctrack/linuxproc",  # no cgroups: works in containers and CI runners
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",  # CPUs and memory are what jobs ask for
        "MpiDefault=none",
        "MailProg=/bin/true",  # no mail from a test cluster
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/slurmdbd",  # sacct reads job states from slurmdbd
        "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={cluster.dbd_port}",
        f"AccountingStoragePass={cluster.munge_socket}",  # for slurmdbd: the munge socket to use
        "JobCompType=jobcomp/none",
        "ReturnToService=2",
        "KillWait=10",  # seconds from SIGTERM to SIGKILL (scancel, time limit)
        "MinJobAge=600",  # finished jobs stay visible to scontrol for the whole session
        "SchedulerParameters=sched_interval=2",  # start queued jobs quickly
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "NodeName={} NodeAddr=127.0.0.1 {} State=UNKNOWN".format(
            cluster.node, " ".join(f"{k}={v}" for k, v in cluster.hardware.items())),
        f"PartitionName={PARTITION} Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP",
    ]


def slurmdbd_conf(cluster: "LocalCluster") -> list[str]:
    """The lines of ``slurmdbd.conf``: the accounting daemon on loopback, its MariaDB beside it."""
    return [
        *_auth(cluster),
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={cluster.dbd_port}",
        f"SlurmUser={cluster.user}",
        f"LogFile={cluster.folder / 'log' / 'slurmdbd.log'}",
        f"PidFile={cluster.folder / 'run' / 'slurmdbd.pid'}",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={cluster.db_port}",
        f"StorageUser={cluster.user}",
        "StorageLoc=slurm_acct_db",
    ]


class ClusterError(RuntimeError):
    """A daemon did not come up; the message ends with the tail of its log."""


class LocalCluster:
    """One SLURM node on localhost; see the module docstring."""

    def __init__(self, folder: Path, name: str = "rnnbench"):
        self.folder = Path(folder)
        self.name = name
        self.user = getpass.getuser()
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.hardware: dict[str, str] = {}
        self.db_port, self.dbd_port, self.ctld_port, self.slurmd_port = _free_ports(4)
        self.conf = self.folder / "etc" / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """What the client commands (and the jobs they submit) need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command (``sacct``, ``scancel`` ...) against this cluster."""
        return subprocess.run([_program(command[0]), *command[1:]], env={**os.environ, **self.env}, text=True,
                              capture_output=True, timeout=timeout, check=check)

    def wait_until_idle(self, timeout: float = 120) -> None:
        """Until no job is queued or running (a job's result can be read before SLURM has
        seen its processes end)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i").stdout.strip():
            if time.monotonic() > deadline:
                raise ClusterError(f"jobs still queued after {timeout:.0f} s:\n{self.run('squeue').stdout}")
            time.sleep(0.5)

    # -- start -------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        """Start every daemon and wait until the node is idle; on any failure stop what
        started and raise :class:`ClusterError` with the failing daemon's log."""
        try:
            self._write_files()
            self._start_munge()
            self._start_database(timeout)
            self._start("slurmdbd", [_program("slurmdbd"), "-D"], "slurmdbd.log")
            self._wait_for(lambda: self._port_open(self.dbd_port), "slurmdbd", timeout)
            self._start("slurmctld", [_program("slurmctld"), "-D", "-i"], "slurmctld.log")
            self._wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", timeout)
            self._start("slurmd", [_program("slurmd"), "-D", "-N", self.node], "slurmd.log")
            self._wait_for(self._node_idle, "slurmd", timeout)
        except BaseException:
            self.stop()
            raise

    def _write_files(self) -> None:
        for sub in ("etc", "munge", "db", "state", "spool", "log", "run"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # slurmd and the jobs traverse it; munged wants no group/other write
        (self.folder / "munge").chmod(0o700)
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.hardware = node_hardware()
        (self.folder / "etc" / "plugstack.conf").write_text("")  # no site SPANK plugins
        self.conf.write_text("\n".join([*slurm_conf(self), ""]))
        dbd = self.folder / "etc" / "slurmdbd.conf"
        dbd.write_text("\n".join([*slurmdbd_conf(self), ""]))
        dbd.chmod(0o600)  # slurmdbd refuses a config others can read (it may hold a password)

    def _start(self, name: str, command: list[str], log: str) -> None:
        """Start a daemon in the foreground of its own session (a Ctrl-C or the end of a
        background shell job does not reach it); its output goes to ``log/<log>.out``."""
        out = open(self.folder / "log" / f"{log}.out", "ab")
        self.processes[name] = subprocess.Popen(command, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _start_munge(self) -> None:
        munge = self.folder / "munge"
        self._start("munged", [_program("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.folder / 'log' / 'munged.log'}",
                               f"--seed-file={munge / 'munged.seed'}"], "munged.log")
        self._wait_for(self.munge_socket.exists, "munged", 30)

    def _start_database(self, timeout: float) -> None:
        data = self.folder / "db"
        user = [f"--user={self.user}"] if os.geteuid() == 0 else []
        subprocess.run([_program("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--skip-test-db",
                        "--auth-root-authentication-method=normal", *SMALL_DATABASE, *user],
                       capture_output=True, check=True, timeout=timeout)
        # Loopback only, no grant tables (slurmdbd may connect as anyone), small buffers.
        self._start("mariadbd", [
            _program("mariadbd"), "--no-defaults", f"--datadir={data}", f"--port={self.db_port}",
            "--bind-address=127.0.0.1", f"--socket={self.folder / 'run' / 'mariadb.sock'}",
            f"--pid-file={self.folder / 'run' / 'mariadb.pid'}", f"--log-error={self.folder / 'log' / 'mariadb.log'}",
            "--skip-grant-tables", "--skip-log-bin", *SMALL_DATABASE, *user], "mariadb.log")
        self._wait_for(lambda: self._port_open(self.db_port), "mariadbd", timeout)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        state = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip()
        return state == "idle"

    def _wait_for(self, ready, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"{name} was not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a daemon's log files (its own log and its captured output)."""
        stem = {"munged": "munged", "mariadbd": "mariadb"}.get(name, name)
        text = []
        for path in sorted((self.folder / "log").glob(f"{stem}.log*")):
            text += [f"--- {path}", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(text)

    # -- stop --------------------------------------------------------------------------

    def stop(self, timeout: float = 60) -> list[str]:
        """Cancel every job, wait until none is left, then stop the daemons (SIGTERM, then
        SIGKILL after ``timeout``) in the reverse order of their start. Returns the names
        of the daemons that had to be killed."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", self.user, check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                time.sleep(0.5)
        killed = []
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    killed.append(name)
        self.processes.clear()
        shutil.rmtree(self.folder / "db", ignore_errors=True)  # the accounting database: not needed after
        return killed

    def running(self) -> list[int]:
        """Processes still running that belong to this cluster: the daemons, and any
        job step (``slurmstepd``) or job process started with its ``SLURM_CONF``."""
        found = [p.pid for p in self.processes.values() if p.poll() is None]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in environ.split(b"\0"):
                found.append(int(entry.name))
        return sorted(set(found))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A SLURM cluster on localhost for the session; every daemon is stopped at the end."""
    missing = missing_programs()
    if missing:
        message = (f"SLURM is not installed here ({', '.join(missing)} not found); as root, "
                   f"`apt-get install {PACKAGES}` (what .ci/run does) runs these tests")
        if os.environ.get("RNNBENCH_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)
    local = LocalCluster(tmp_path_factory.mktemp("slurm"))
    started = time.monotonic()
    local.start()
    print(f"\nSLURM cluster up in {time.monotonic() - started:.1f} s: node {local.node} {local.hardware}, "
          f"SLURM_CONF={local.conf}")
    yield local
    killed = local.stop()
    assert not killed and not local.running(), f"left running: {local.running()}, killed: {killed}"
