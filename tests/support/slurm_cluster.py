"""A real, throw-away single-node SLURM cluster for tests, with fake GPUs.

Usage::

    from support.slurm_cluster import slurm_cluster, run_workflow_on_slurm

    with slurm_cluster() as cluster:          # raises ClusterUnavailable if it cannot
        proc = run_workflow_on_slurm(workdir, ["figures/all"], cluster=cluster)

What it does (Debian/Ubuntu, as root, no systemd needed):

* installs ``slurm-wlm`` and ``munge`` with apt-get if the daemons are missing and we
  are root and apt-get exists; otherwise raises :class:`ClusterUnavailable`;
* keeps *all* of its state under one directory (default
  ``$TMPDIR/personadrift-slurm-<uid>``): its own munge key, munged socket, slurm.conf,
  gres.conf, state/spool/log/pid files. Nothing under /etc is written, and a system
  munged or another SLURM installation on the machine is left alone. Client commands
  find the cluster through ``SLURM_CONF`` (see :meth:`SlurmCluster.env`);
* one node (this host), ``CPUs=2`` and ``RealMemory`` a bit under the machine's total,
  GRES ``gpu:fake:2`` backed by two touched files (scheduling of GPUs is real: a job
  asking ``--gpus=1`` gets one and ``SLURM_JOB_GPUS`` / ``CUDA_VISIBLE_DEVICES`` are
  set; no device is actually bound);
* starts munged, slurmctld and slurmd (they daemonize and write pid files), waits
  (bounded) until ``sinfo`` reports the node idle, and on exit stops the daemons by
  their pid files.

Idempotent: a start first stops daemons left by an earlier run from the pid files in the
state directory (checking that the pid still belongs to that daemon), then wipes and
recreates the directory. A lock file (``flock``) held while the cluster is up keeps two
test sessions from sharing or killing one state directory; the lock goes away with the
process, so a killed run's daemons are cleaned up by the next start. Ports: 6817/6818
when free, else the first free pair above 16817 (so a system SLURM is not disturbed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ClusterUnavailable",
    "ClusterStartError",
    "SlurmCluster",
    "slurm_cluster",
    "start_cluster",
    "stop_cluster",
    "default_root",
    "run_workflow_on_slurm",
    "TEST_SLURM_ARGS",
    "REPO_ROOT",
    "DEFAULT_PROFILE",
]

#: Repository root when running from a source checkout (src/personadrift/testing/...).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The repository's SLURM profile (the top-level ``slurm`` symlink points here).
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "slurm"

#: Flags a test cluster needs on top of the profile: no accounting database (so no
#: ``sacct``: query ``squeue``), first status check after 1 s instead of 40 s, no account.
TEST_SLURM_ARGS: tuple[str, ...] = (
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-no-account",
)

_DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order
_MARKER = ".personadrift-slurm-cluster"
_CLIENT_TOOLS = ("srun", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct", "salloc")
_NEEDED_TOOLS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "srun")


class ClusterUnavailable(RuntimeError):
    """No SLURM cluster can be had here (not root, no apt-get, lock held...).

    Tests should skip on this. ``reason`` says why.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ClusterStartError(RuntimeError):
    """The software is there but the cluster did not come up; carries log tails."""


def default_root() -> Path:
    """Fixed per-user state directory, so a later run finds an earlier run's pid files."""
    return Path(tempfile.gettempdir()) / f"personadrift-slurm-{os.getuid()}"


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<{path}: {e.strerror}>"
    return "\n".join(lines[-n:]) or f"<{path}: empty>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_is(pid: int, name: str) -> bool:
    """Does pid still run ``name`` (guards against recycled pids)?

    ``name`` is matched against the executable's basename, or for ``"snakemake"``
    against any word of the command line (``python -m snakemake``).
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if name == "snakemake":
        return b"snakemake" in argv
    return os.path.basename(argv[0].decode(errors="replace")) == name


def _kill_pidfile(pidfile: Path, name: str, timeout: float = 15.0, first=signal.SIGTERM) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if pid <= 1 or not _pid_alive(pid) or not _pid_is(pid, name):
        return
    for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.1)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    if _port_free(6817) and _port_free(6818):
        return 6817, 6818
    for base in range(16817, 17817, 2):
        if _port_free(base) and _port_free(base + 1):
            return base, base + 1
    raise ClusterUnavailable("no free pair of TCP ports for slurmctld/slurmd")


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ClusterStartError("MemTotal not found in /proc/meminfo")


def _ensure_installed(install: bool) -> None:
    missing = [t for t in _NEEDED_TOOLS if not _which(t)]
    if not missing:
        return
    if not install:
        raise ClusterUnavailable(f"SLURM/munge not installed (missing: {', '.join(missing)})")
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            f"SLURM/munge not installed (missing: {', '.join(missing)}) and not root to apt-get them"
        )
    apt = shutil.which("apt-get")
    if not apt:
        raise ClusterUnavailable(
            f"SLURM/munge not installed (missing: {', '.join(missing)}) and no apt-get"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"{' '.join(cmd)} timed out") from None
        if p.returncode != 0:
            raise ClusterUnavailable(
                f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout)[-2000:]}"
            )
    missing = [t for t in _NEEDED_TOOLS if not _which(t)]
    if missing:
        raise ClusterUnavailable(f"still missing after apt-get install: {', '.join(missing)}")


def _which(tool: str) -> str | None:
    # The daemons live in /usr/sbin, which is not always on a test runner's PATH.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


# --------------------------------------------------------------------------- cluster


@dataclass
class SlurmCluster:
    """A running single-node cluster. Use as a context manager (stops on exit)."""

    root: Path
    node: str
    cpus: int
    real_memory_mb: int
    gpus: int
    ctld_port: int
    slurmd_port: int
    partition: str = "debug"
    _lock_fd: int | None = field(default=None, repr=False)

    # paths -----------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def logs(self) -> dict[str, Path]:
        return {d: self.root / "log" / f"{d}.log" for d in _DAEMONS}

    # use ----------------------------------------------------------------------
    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for SLURM clients (sbatch, squeue, snakemake) to reach this cluster.

        Sets ``SLURM_CONF``; puts the client shims (``<root>/bin``: srun, scontrol... pinned
        to this cluster's SLURM_CONF) and this Python's bin dir (the venv) first on ``PATH``,
        so that jobs, which get the submitter's environment (``sbatch --export=ALL``), run
        the same ``python -m snakemake`` and reach this cluster; /usr/sbin last.
        """
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        path = [str(self.root / "bin"), str(Path(sys.executable).parent)]
        path += env.get("PATH", "").split(os.pathsep) + ["/usr/sbin"]
        seen: set[str] = set()
        env["PATH"] = os.pathsep.join(p for p in path if p and not (p in seen or seen.add(p)))
        # Do not leak an outer allocation into the test cluster's clients.
        for k in [k for k in env if k.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_", "SRUN_"))]:
            del env[k]
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster, e.g. ``run("sinfo")``."""
        return subprocess.run(
            list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout, check=check
        )

    def node_state(self) -> str:
        p = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False, timeout=15)
        return p.stdout.strip() if p.returncode == 0 else f"<sinfo failed: {p.stderr.strip()}>"

    def diagnostics(self) -> str:
        parts = [f"state dir: {self.root}"]
        for _d, log in self.logs.items():
            parts.append(f"--- {log} (tail) ---\n{_tail(log)}")
        return "\n".join(parts)

    def stop(self) -> None:
        stop_cluster(self.root)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_cluster(root: Path | str | None = None) -> None:
    """Stop slurmd, slurmctld and munged of the cluster in ``root`` by their pid files.

    Safe to call when nothing runs; never kills a pid that no longer runs that daemon.
    """
    root = Path(root) if root is not None else default_root()
    # 1. Workflow drivers started by run_workflow_on_slurm and orphaned (e.g. pytest was
    #    killed): they would go on submitting to whatever cluster answers next.
    for pidfile in (root / "run").glob("workflow-*.pid"):
        _kill_pidfile(pidfile, "snakemake", timeout=10, first=signal.SIGINT)
        pidfile.unlink(missing_ok=True)
    # 2. Cancel this cluster's jobs while slurmctld still runs: stopping the daemons
    #    alone would leave slurmstepd and the jobs' processes running.
    conf = root / "etc" / "slurm.conf"
    ctld_pidfile = root / "run" / "slurmctld.pid"
    try:
        ctld_pid = int(ctld_pidfile.read_text().strip())
    except (OSError, ValueError):
        ctld_pid = 0
    if conf.exists() and ctld_pid > 1 and _pid_alive(ctld_pid) and _pid_is(ctld_pid, "slurmctld"):
        env = dict(os.environ, SLURM_CONF=str(conf))
        squeue = [
            _which("squeue") or "squeue",
            "-h",
            "-t",
            "PENDING,RUNNING,CONFIGURING,COMPLETING",
            "-o",
            "%i",
        ]
        try:
            subprocess.run(
                [_which("scancel") or "scancel", "--user", str(os.getuid())],
                env=env,
                capture_output=True,
                timeout=15,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = subprocess.run(squeue, env=env, capture_output=True, text=True, timeout=15)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass
    # 3. The daemons.
    for d in _DAEMONS:
        _kill_pidfile(root / "run" / f"{d}.pid", d)


def _is_our_state(root: Path) -> bool:
    if (root / _MARKER).exists():
        return True
    try:
        head = (root / "etc" / "slurm.conf").read_text()[:100]
    except OSError:
        return False
    return head.startswith("# written by tests/support/slurm_cluster.py")


def _acquire_lock(root: Path) -> int:
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = root.parent / (root.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ClusterUnavailable(
            f"another process holds {lock}: a test cluster in {root} is in use"
        ) from None
    return fd


def start_cluster(
    root: Path | str | None = None,
    *,
    cpus: int = 2,
    gpus: int = 2,
    real_memory_mb: int | None = None,
    timeout: float = 60.0,
    install: bool = True,
) -> SlurmCluster:
    """Start a fresh single-node cluster in ``root`` and wait until its node is idle.

    Raises :class:`ClusterUnavailable` when it cannot be had at all (skip the test) and
    :class:`ClusterStartError` (with daemon log tails) when it was tried and failed.
    """
    if not sys.platform.startswith("linux"):
        raise ClusterUnavailable("needs Linux")
    root = Path(root) if root is not None else default_root()
    if os.geteuid() != 0:
        # slurmd must run as root to launch jobs; SlurmUser=root keeps it simple.
        raise ClusterUnavailable("needs root (slurmd runs as root)")
    lock_fd = _acquire_lock(root)
    try:
        _ensure_installed(install)
        stop_cluster(root)  # leftovers of an earlier (killed) run
        if root.exists():
            if any(root.iterdir()) and not _is_our_state(root):
                raise ClusterUnavailable(
                    f"{root} exists and is not a test-cluster state directory; not wiping it"
                )
            shutil.rmtree(root, ignore_errors=True)
        cluster = _start(root, cpus=cpus, gpus=gpus, real_memory_mb=real_memory_mb, timeout=timeout)
    except BaseException:
        stop_cluster(root)
        os.close(lock_fd)
        raise
    cluster._lock_fd = lock_fd
    return cluster


def slurm_cluster(root: Path | str | None = None, **kwargs) -> SlurmCluster:
    """``with slurm_cluster() as c: ...`` — same arguments as :func:`start_cluster`."""
    return start_cluster(root, **kwargs)


def _start(
    root: Path, *, cpus: int, gpus: int, real_memory_mb: int | None, timeout: float
) -> SlurmCluster:
    for sub in ("etc", "munge", "run", "log", "state", "spool", "dev", "bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text("state of tests/support/slurm_cluster.py; safe to delete\n")
    # munged wants its socket's directory world-executable (the key file stays 0600).
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o755)

    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _pick_ports()
    mem = real_memory_mb or max(1000, int(_mem_total_mb() * 0.9))
    cluster = SlurmCluster(
        root=root,
        node=node,
        cpus=cpus,
        real_memory_mb=mem,
        gpus=gpus,
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
    )

    # munge: own key, own socket; nothing under /etc/munge or /run/munge is touched.
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    _daemon(
        cluster,
        "munged",
        [
            _which("munged"),
            f"--socket={cluster.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={root / 'run' / 'munged.pid'}",
            f"--log-file={cluster.logs['munged']}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
            "--force",
        ],
        ready=lambda: cluster.munge_socket.exists(),
        timeout=20,
    )

    # Fake GPUs: GRES backed by touched files (without File= the node registers INVALID).
    for i in range(gpus):
        (root / "dev" / f"fakegpu{i}").touch()
    gres_file = root / "dev" / (f"fakegpu[0-{gpus - 1}]" if gpus > 1 else "fakegpu0")
    gres_line = f"NodeName={node} Name=gpu Type=fake File={gres_file}\n" if gpus else ""
    (root / "etc" / "gres.conf").write_text("AutoDetect=off\n" + gres_line)
    node_gres = f" Gres=gpu:fake:{gpus}" if gpus else ""
    (root / "etc" / "slurm.conf").write_text(
        f"""# written by tests/support/slurm_cluster.py; state in {root}
ClusterName=personadrift
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={cluster.munge_socket}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={cluster.logs['slurmctld']}
SlurmdLogFile={cluster.logs['slurmd']}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Keep finished jobs visible to squeue for 5 min (the Snakemake plugin's squeue status
# mode needs them; it falls back to sacct when MinJobAge < 3x the first check delay).
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
# The node is this machine: trust the values below even if the hardware differs.
SlurmdParameters=config_overrides
# (No AccountingStorageTRES=gres/gpu: slurmctld refuses it without slurmdbd.)
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem}{node_gres} State=UNKNOWN
PartitionName={cluster.partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    # Client shims: snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_*
    # variable except the job's identity, SLURM_CONF included, before its nested
    # `srun ... python -m snakemake` inside each job; srun then looks in
    # /etc/slurm/slurm.conf (absent, or another cluster's) and fails with "Could not
    # establish a configuration source". These wrappers, first on the jobs' PATH, pin
    # SLURM_CONF to this cluster without writing anything outside the state directory.
    for tool in _CLIENT_TOOLS:
        real = _which(tool)
        if real:
            shim = root / "bin" / tool
            shim.write_text(
                f'#!/bin/sh\nSLURM_CONF={cluster.conf}\nexport SLURM_CONF\nexec {real} "$@"\n'
            )
            shim.chmod(0o755)

    env = cluster.env()
    _daemon(
        cluster,
        "slurmctld",
        [_which("slurmctld"), "-f", str(cluster.conf)],
        env=env,
        ready=lambda: "UP" in cluster.run("scontrol", "ping", check=False, timeout=10).stdout,
        timeout=timeout,
    )
    _daemon(
        cluster,
        "slurmd",
        [_which("slurmd"), "-f", str(cluster.conf)],
        env=env,
        ready=lambda: True,
        timeout=timeout,
    )

    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = cluster.node_state()
        if state == "idle":
            return cluster
        if any(s in state for s in ("inval", "drain", "down", "fail")) and "*" not in state:
            # give slurmd a moment to register; these states do not resolve by waiting long
            time.sleep(2)
            state = cluster.node_state()
            if state != "idle" and any(s in state for s in ("inval", "drain", "fail")):
                break
        time.sleep(0.5)
    node_info = cluster.run("scontrol", "show", "node", node, check=False).stdout
    raise ClusterStartError(
        f"node {node} not idle within {timeout:.0f}s (state: {state!r})\n{node_info}\n"
        + cluster.diagnostics()
    )


def _daemon(
    cluster: SlurmCluster,
    name: str,
    cmd: Sequence[str],
    *,
    ready,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start a self-daemonizing server; wait for its pid file and ``ready()``."""
    pidfile = cluster.root / "run" / f"{name}.pid"
    p = subprocess.run(
        list(cmd),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if p.returncode != 0:
        raise ClusterStartError(
            f"{name} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}\n"
            + cluster.diagnostics()
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and _pid_alive(pid):
            if ready():
                return
        elif pid:
            raise ClusterStartError(f"{name} (pid {pid}) died on start\n" + cluster.diagnostics())
        time.sleep(0.2)
    raise ClusterStartError(
        f"{name} did not come up within {timeout:.0f}s\n" + cluster.diagnostics()
    )


# --------------------------------------------------------------------------- workflows


def run_workflow_on_slurm(
    workdir: Path | str,
    targets: Iterable[str] = (),
    extra_args: Iterable[str] = (),
    *,
    cluster: SlurmCluster | None = None,
    snakefile: Path | str | None = None,
    profile: Path | str | None = DEFAULT_PROFILE,
    test_args: Iterable[str] | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``snakemake`` with the SLURM executor and return the finished process.

    The command is ``<this python> -m snakemake [--snakefile S] --directory WORKDIR
    --profile PROFILE --executor slurm TEST_SLURM_ARGS --verbose EXTRA_ARGS TARGETS``,
    run in ``workdir`` with ``cluster.env()`` (``SLURM_CONF``, venv first on PATH). Output
    (stdout and stderr merged) is in ``.stdout``; the return code is not checked, so the
    caller can assert on it and print ``.stdout`` on failure.

    ``test_args`` defaults to :data:`TEST_SLURM_ARGS` with a test ``cluster`` and to none
    with ``cluster=None``, which uses the current environment's SLURM (a real cluster).
    ``profile=None`` runs without a profile. On ``timeout`` Snakemake gets SIGINT (it
    cancels its jobs), the return code is 124 and squeue/daemon logs are appended.
    """
    if test_args is None:
        test_args = TEST_SLURM_ARGS if cluster is not None else ()
    workdir = Path(workdir)
    cmd = [sys.executable, "-m", "snakemake"]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    cmd += ["--directory", str(workdir)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    cmd += ["--executor", "slurm", *test_args, "--verbose", *extra_args, *targets]
    run_env = cluster.env(env) if cluster is not None else dict(os.environ if env is None else env)
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    # Recorded so that stop_cluster()/the next start_cluster() ends it if we get killed.
    pidfile = cluster.root / "run" / f"workflow-{proc.pid}.pid" if cluster is not None else None
    if pidfile is not None:
        pidfile.write_text(str(proc.pid))
    try:
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout=out)
    except subprocess.TimeoutExpired:
        # SIGINT: Snakemake cancels its SLURM jobs (scancel) before exiting.
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        out = f"{out}\n--- timed out after {timeout:.0f}s ---\n"
        if cluster is not None:
            q = cluster.run("squeue", "--states=all", "-o", "%i %j %T %r", check=False)
            out += "--- squeue ---\n" + q.stdout + q.stderr + "\n" + cluster.diagnostics()
        return subprocess.CompletedProcess(cmd, 124, stdout=out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
