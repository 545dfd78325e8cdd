"""A one-node SLURM cluster with accounting, in one temporary folder (a plain module: the fixture is in conftest.py).

Debian's packages (``slurmctld slurmd slurm-client munge slurmdbd mariadb-server``),
no systemd, no cgroups: munged with its own socket, MariaDB on a free local
port, slurmdbd, slurmctld and slurmd, every path (state, spool, pid, log files)
under the folder. Accounting is there because without it submitit cannot see
that a job was cancelled (``sacct`` fails, the job stays UNKNOWN and the Hydra
sweep waits for ever). Every wait has a deadline; :meth:`Cluster.stop` cancels
the jobs, waits for an empty queue and stops the daemons by their pid files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The programs the cluster needs, and the Debian packages that hold them (.ci/run installs them).
PROGRAMS = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "sacct", "sacctmgr", "scancel", "scontrol", "squeue")
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"


def why_not() -> str | None:
    """One line saying why no cluster can start here, or None."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}): apt-get install {PACKAGES} (.ci/run does, as root)"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (slurmd runs jobs as their users)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def wait_for(what: str, check, timeout: float, every: float = 0.1):
    """Poll ``check()`` until it returns something true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Cluster:
    """A one-node cluster in ``folder``; :attr:`env` is what a process that submits needs (``SLURM_CONF``: munge's socket is in slurm.conf)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.host = socket.gethostname().split(".")[0]  # NodeName must be `hostname -s`
        self.munge_socket = folder / "munge" / "munge.socket"
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: list[tuple[str, Path]] = []  # (daemon, pid file), in start order

    # -- commands -------------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (``sacct``, ``scancel``, ...) against this cluster, with a deadline."""
        r = subprocess.run([_program(args[0]), *args[1:]], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-1000:]}")
        return r

    def queue(self) -> list[str]:
        """Job ids in the queue (pending, running or completing), array tasks as ``<id>_<task>``."""
        out = self.run("squeue", "--noheader", "--array", "--format=%i", check=False).stdout
        return out.split()

    def state(self, job: str) -> str:
        """The job's state as accounting knows it (``RUNNING``, ``COMPLETED``, ``CANCELLED`` ...); '' when unknown."""
        out = self.run("sacct", "--noheader", "--parsable2", "--format=JobID,State", "-j", job, check=False).stdout
        for line in out.splitlines():
            jid, _, st = line.partition("|")
            if jid == job:
                return st.split()[0] if st else ""
        return ""

    def on_node(self, job: str) -> bool:
        """Whether any step of ``job`` (an id as squeue shows it, ``12_0`` for an array task) still runs on the node.

        slurmd keeps one socket per running step in its spool folder,
        ``<node>_<job id>.<step>``, and removes it once the step has ended and
        reported to slurmctld.
        """
        number = self.run("squeue", "--noheader", "--format=%A", "-j", job, check=False).stdout.strip() or job
        return any((self.folder / "spool").glob(f"{self.host}_{number}.*"))

    # -- bring-up --------------------------------------------------------------------------------
    def _start_reaper(self) -> None:
        """A watcher that kills the cluster if this process dies without its tear-down (SIGKILL, SIGTERM: no fixture runs then).

        The daemons fork into the background, so nothing ties them to us; the
        watcher, our child, asks the kernel for SIGTERM when we die
        (``PR_SET_PDEATHSIG``) and then SIGKILLs every process whose
        environment holds this cluster's ``SLURM_CONF`` (the SLURM daemons,
        slurmstepd, the jobs) and MariaDB and munged by their pid files.
        """
        self._reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(self.conf), str(self.folder / "pid")], start_new_session=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _daemon(self, name: str, args: list[str], pid_file: Path, timeout: float = 20) -> None:
        """Start a daemon that forks into the background and writes ``pid_file``; wait for the file."""
        log = open(self.folder / "log" / f"{name}.out", "ab")
        with log:
            r = subprocess.run([_program(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"{name} did not start ({r.returncode}): see {self.folder / 'log'}")
        self._pids.append((name, pid_file))
        wait_for(f"{name}'s pid file", lambda: pid_file.exists() and pid_file.read_text().strip(), timeout)

    def start(self) -> "Cluster":
        f = self.folder
        self._start_reaper()
        for d in ("munge", "log", "pid", "state", "spool", "mysql", "jobs"):
            (f / d).mkdir(mode=0o700, exist_ok=True)
        # munge: a key of our own and its own socket (/run/munge does not exist without systemd).
        subprocess.run([_program("mungekey"), "--create", f"--keyfile={f / 'munge' / 'munge.key'}"], check=True, timeout=20,
                       capture_output=True)
        self._daemon("munged", ["--force", f"--socket={self.munge_socket}", f"--key-file={f / 'munge' / 'munge.key'}",
                                f"--pid-file={f / 'pid' / 'munged.pid'}", f"--log-file={f / 'log' / 'munged.log'}",
                                f"--seed-file={f / 'munge' / 'munged.seed'}"], f / "pid" / "munged.pid")
        wait_for("munge's socket", self.munge_socket.exists, 10)

        # MariaDB for slurmdbd, on a free port of the loopback interface; a user for slurmdbd.
        db_port, sql_socket = _free_port(), f / "mysql" / "mysqld.sock"
        subprocess.run([_program("mariadb-install-db"), "--no-defaults", f"--datadir={f / 'mysql' / 'data'}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, timeout=60, capture_output=True)
        db_log = open(f / "log" / "mariadbd.out", "ab")
        with db_log:
            subprocess.Popen([_program("mariadbd"), "--no-defaults", f"--datadir={f / 'mysql' / 'data'}", "--user=root",
                              f"--socket={sql_socket}", f"--pid-file={f / 'pid' / 'mariadbd.pid'}", f"--port={db_port}",
                              "--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=16M",
                              f"--log-error={f / 'log' / 'mariadbd.log'}"],
                             stdout=db_log, stderr=subprocess.STDOUT, start_new_session=True)
        self._pids.append(("mariadbd", f / "pid" / "mariadbd.pid"))
        wait_for("MariaDB's socket", sql_socket.exists, 60)
        subprocess.run([_program("mariadb"), "--no-defaults", f"--socket={sql_socket}", "-uroot", "-e",
                        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"],
                       check=True, timeout=30, capture_output=True)

        dbd_port, ctld_port, slurmd_port = _free_port(), _free_port(), _free_port()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd_conf = f / "slurmdbd.conf"
        dbd_conf.write_text(
            auth + f"DbdHost=localhost\nDbdPort={dbd_port}\nSlurmUser=root\nPidFile={f / 'pid' / 'slurmdbd.pid'}\n"
            f"LogFile={f / 'log' / 'slurmdbd.log'}\nStorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={db_port}\nStorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct_db\n")
        dbd_conf.chmod(0o600)  # slurmdbd refuses a readable password file
        self.conf.write_text(
            auth + f"ClusterName=xbenchtest\nSlurmctldHost={self.host}(127.0.0.1)\nSlurmctldPort={ctld_port}\n"
            f"SlurmdPort={slurmd_port}\nSlurmUser=root\nSlurmdUser=root\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={dbd_port}\nAccountingStoragePass={self.munge_socket}\n"
            "JobAcctGatherType=jobacct_gather/none\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSchedulerType=sched/builtin\n"
            "KillWait=5\nMinJobAge=300\nReturnToService=2\nMailProg=/bin/true\nJobRequeue=1\n"
            f"StateSaveLocation={f / 'state'}\nSlurmdSpoolDir={f / 'spool'}\n"
            f"SlurmctldPidFile={f / 'pid' / 'slurmctld.pid'}\nSlurmdPidFile={f / 'pid' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}\nSlurmdLogFile={f / 'log' / 'slurmd.log'}\n"
            # The node as slurm.conf says, not as slurmd finds it (config_overrides): 8 CPUs and 64 GB, so the
            # README's commands run verbatim with the launcher's defaults (4 CPUs, 16 GB a job), two jobs at once.
            f"SlurmdParameters=config_overrides\nNodeName={self.host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=65536 State=UNKNOWN\n"
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP\n")
        self._daemon("slurmdbd", [], f / "pid" / "slurmdbd.pid")  # reads slurmdbd.conf beside $SLURM_CONF
        # slurmctld exits at once if slurmdbd does not answer yet (its pid file comes before it listens).
        wait_for("slurmdbd to listen", lambda: _listening(dbd_port), 60)
        self._daemon("slurmctld", ["-c"], f / "pid" / "slurmctld.pid")  # -c: a clean start, no saved state
        self._daemon("slurmd", [], f / "pid" / "slurmd.pid")
        wait_for("the node to be idle", lambda: "idle" in self.run("sinfo", "--noheader", "--format=%t", check=False).stdout, 60, 0.2)
        return self

    # -- tear-down -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, wait for an empty queue, then stop the daemons (last started first) by their pid files."""
        try:
            if self.queue():
                self.run("scancel", "--full", f"--user={os.getuid()}", check=False)
                wait_for("an empty queue", lambda: not self.queue(), 60, 0.5)
        finally:
            # The SLURM daemons together (each takes ~2 s to stop), then what they used: MariaDB and munged.
            daemons = dict(self._pids)
            _stop([(n, daemons[n]) for n in ("slurmd", "slurmctld", "slurmdbd") if n in daemons])
            _stop([(n, daemons[n]) for n in ("mariadbd", "munged") if n in daemons])
            reaper = getattr(self, "_reaper", None)
            if reaper is not None:  # a clean tear-down: the watcher leaves without killing anything
                reaper.send_signal(signal.SIGUSR1)
                reaper.wait(10)


#: The watcher of :meth:`Cluster._start_reaper` (argv: slurm.conf, the pid folder).
_REAPER = """
import ctypes, os, signal, sys, time
from pathlib import Path

conf, pids = sys.argv[1], Path(sys.argv[2])
mark = ("SLURM_CONF=" + conf).encode()


def ours(pid):
    try:
        return mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\\0")
    except OSError:
        return False


def reap(*_):
    victims = {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and ours(p)}
    for name in ("mariadbd", "munged"):
        try:
            victims.add(int((pids / f"{name}.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


signal.signal(signal.SIGTERM, reap)
signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))  # the tear-down ran: nothing to do
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the process that started us dies
if os.getppid() == 1:  # it died before the line above
    reap()
while True:
    time.sleep(3600)
"""


def _stop(daemons: list[tuple[str, Path]], timeout: float = 20) -> None:
    """SIGTERM the processes in the pid files, SIGKILL any still there after ``timeout`` seconds."""
    pids = {}
    for name, pid_file in daemons:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            pids[name] = pid
        except (OSError, ValueError, IndexError):  # no pid file, or the process is gone
            continue

    def gone(pid):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of ours (mariadbd, started with Popen): reaped
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    for name, pid in pids.items():
        try:
            wait_for(f"{name} to stop", lambda: gone(pid), timeout)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            wait_for(f"{name} to die", lambda: gone(pid), 10)
