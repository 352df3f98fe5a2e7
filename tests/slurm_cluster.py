"""A real single-node SLURM cluster for the tests, from Debian's packages, started by hand without systemd:
munge, MariaDB, slurmdbd (accounting: submitit reads a job's state with sacct), slurmctld and slurmd, each in the
foreground under setsid, all of their files in one folder, on ports nobody else uses. Every daemon is stopped by
the PID it was started with (stop()), also when a test fails.

Debian's slurm-wlm 22.05 on one machine: NodeName=localhost at 127.0.0.1 with the CPUs and memory `slurmd -C`
reads; processes tracked without cgroups (proctrack/linuxproc, task/none), since a container has no systemd to
delegate them; select/cons_tres with CR_Core_Memory and DefMemPerCPU so that several jobs share the node."""

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
PROGRAMS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "scancel", "sinfo", "munged", "mariadbd",
            "mariadb-install-db", "mariadb")
START_S = 120  # from packages to an idle node took 25-60 s on a 2-core machine


class ClusterError(RuntimeError):
    """The cluster could not be installed or started: one line saying which step and why."""


def install_packages() -> None:
    """The Debian packages, where a program is missing: apt-get as root, once with the package lists as they
    are and once after `apt-get update`. A machine where that cannot work gets one line saying so."""
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if not missing:
        return
    why = f"SLURM's programs are missing ({', '.join(missing)})"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ClusterError(f"{why} and this machine cannot install them (apt-get as root); fix: install the Debian "
                           f"packages {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"{why} and `{' '.join(install)}` failed ({last}); fix: install them by hand")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_hardware() -> Dict[str, int]:
    """CPUs and memory as slurmd itself reads them (its NodeName line)."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(CPUs|RealMemory)=(\d+)", line)}


@dataclass
class Cluster:
    folder: Path
    partition: str = "debug"
    processes: Dict[str, subprocess.Popen] = field(default_factory=dict)
    hardware: Dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> Dict[str, str]:
        """What a client (sbatch, sacct, submitit, qco's sweep) needs to find this cluster."""
        return {"SLURM_CONF": str(self.folder / "slurm.conf")}

    def client(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=check, timeout=60)

    def log_tails(self) -> str:
        return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                         for path in sorted(self.folder.glob("*.log")))

    def daemon(self, name: str, command: List[str]) -> None:
        log = open(self.folder / f"{name}.log", "ab")
        # a session of its own: a signal meant for the test run (Ctrl-C) does not reach it first, and stop()
        # ends the daemon and whatever it started (slurmd's job steps) as one group
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                env={**os.environ, **self.env})
        log.close()

    def wait(self, what: str, ready, timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.log_tails()}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"waited {timeout:.0f} s for {what}:\n{self.log_tails()}")

    def stop(self) -> None:
        """Every daemon this cluster started, by its PID (its process group), then SIGKILL for any still there;
        then whatever its jobs left: slurmstepd leaves slurmd's session, so it and a job's processes are found by
        the SLURM_CONF of this cluster in their environment."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.client("scancel", "--user=root", check=False)
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> List[int]:
        """Processes still running with this cluster's SLURM_CONF: job steps and their jobs."""
        mine = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if mine in (proc / "environ").read_bytes().split(b"\0"):
                        found.append(int(proc.name))
                except OSError:  # gone, or not ours to read
                    pass
        return found


def start(folder: Path) -> Cluster:
    """Install where needed, start every daemon and wait until the node is idle; on any failure the daemons
    already started are stopped before the error is raised."""
    install_packages()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # munge checks that its socket's folder is not writable by others
    cluster = Cluster(folder=folder, hardware=node_hardware())
    try:
        _start(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start(cluster: Cluster) -> None:
    folder = cluster.folder
    munge_socket = folder / "munge.socket"
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    # --force: munged refuses to run as root without it; its files here, not in /run/munge and /var/lib/munge
    cluster.daemon("munged", ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                              f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.file.log'}",
                              f"--seed-file={folder / 'munged.seed'}"])
    cluster.wait("munged's socket", munge_socket.exists, timeout=30)

    data, db_socket, db_port = folder / "mariadb", folder / "mariadb.socket", free_port()
    installed = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                                "--auth-root-authentication-method=socket", "--skip-test-db"],
                               capture_output=True, text=True)
    if installed.returncode != 0:
        raise ClusterError(f"mariadb-install-db failed: {installed.stderr.strip()[-500:]}")
    cluster.daemon("mariadb", ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={db_socket}",
                               f"--port={db_port}", "--bind-address=127.0.0.1", "--user=root",
                               f"--pid-file={folder / 'mariadb.pid'}", "--skip-log-bin"])
    cluster.wait("MariaDB's socket", db_socket.exists, timeout=60)
    password = secrets.token_hex(8)
    grant = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
             "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
    subprocess.run(["mariadb", "--no-defaults", f"--socket={db_socket}", "-u", "root", "-e", grant], check=True,
                   capture_output=True, timeout=60)

    dbd_port, ctld_port, slurmd_port = free_port(), free_port(), free_port()
    auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
    dbd_conf = folder / "slurmdbd.conf"  # slurmdbd reads it from slurm.conf's folder (SLURM_CONF)
    dbd_conf.write_text(auth + f"""DbdHost=localhost
DbdPort={dbd_port}
SlurmUser=root
PidFile={folder / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
""")
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read: it holds the password

    cpus, memory = cluster.hardware["CPUs"], cluster.hardware["RealMemory"]
    (folder / "slurm.conf").write_text(auth + f"""ClusterName=qco
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(256, memory // cpus // 4)}
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=10
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_socket}
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={cluster.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    (folder / "state").mkdir(exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)

    cluster.daemon("slurmdbd", ["slurmdbd", "-D", "-v"])
    cluster.wait("slurmdbd", lambda: _listening(dbd_port), timeout=60)
    cluster.daemon("slurmctld", ["slurmctld", "-D", "-i", "-f", str(folder / "slurm.conf")])
    cluster.wait("slurmctld", lambda: cluster.client("sinfo", "-h", check=False).returncode == 0, timeout=60)
    cluster.daemon("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(folder / "slurm.conf")])
    cluster.wait("the node to be idle", lambda: "idle" in cluster.client("sinfo", "-h", "-o", "%T", check=False).stdout)
    # accounting answers once slurmctld has registered the cluster with slurmdbd
    cluster.wait("sacct", lambda: cluster.client("sacct", "-n", "-X", check=False).returncode == 0, timeout=60)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
