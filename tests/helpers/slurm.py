"""A real Slurm cluster on this host for the tests: munged, slurmctld and two slurmd (nodes n1 and n2,
both at 127.0.0.1 on ports of their own), every file in a temporary directory, stopped at the end.

Without Slurm's binaries (`apt-get install slurm-wlm munge`) the tests that use it skip with one line;
under CI (CI=true) they fail instead: CI installs them (.ci/run)."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "scontrol", "squeue", "sinfo", "scancel")
NODES = ("n1", "n2")
# a requeued job waits the credential lifetime before it may start again: 120 s by default
CRED_EXPIRE_S = 5


def find_binary(name: str) -> str | None:
    """On PATH, or in the sbin directories a non-root PATH often lacks."""
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/local/sbin")
                                       if (p := Path(d) / name).is_file()), None)


def missing_reason() -> str | None:
    missing = [name for name in (*DAEMONS, *COMMANDS) if find_binary(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def slurm_conf(root: Path, ports: list[int]) -> str:
    host = socket.gethostname().split(".")[0]
    user = getpass.getuser()
    nodes = "\n".join(f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs=1 "
                      "State=UNKNOWN" for name, port in zip(NODES, ports[1:]))
    return f"""ClusterName=tests
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire={CRED_EXPIRE_S}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/linear
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName=tests Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path                  # slurm.conf, the daemons' state and logs

    @property
    def env(self) -> dict[str, str]:
        """This process's environment, with the cluster's slurm.conf for Slurm's commands."""
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([find_binary(command[0]) or command[0], *command[1:]], env=self.env,
                                capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}"
                                 f"\n{self.logs()}")
        return result

    def sbatch(self, script: Path, *args: str, options: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> str:
        """Submit `script` with `args` after it; `env` is the job's environment (sbatch passes it on)."""
        result = subprocess.run([find_binary("sbatch"), "--parsable", *options, str(script), *args],
                                env={**(env or os.environ), "SLURM_CONF": self.env["SLURM_CONF"]},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}\n{self.logs()}"
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def wait_for(self, job_id: str, done, timeout: float = 300, poll: float = 0.5) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not done(job := self.job(job_id)):
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise AssertionError(f"job {job_id} timed out in state {job.get('JobState')}\n"
                                     f"{self.logs()}")
            time.sleep(poll)
        return job

    def wait_until_finished(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        return self.wait_for(job_id, lambda job: job["JobState"] in (
            "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), timeout)

    def logs(self, lines: int = 15) -> str:
        tails = []
        for path in sorted((self.root / "log").glob("*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(tails)

    def nodes_idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split("\n")
        return sorted(line.split()[1] for line in states if line.strip()) == ["idle", "idle"]


def start_cluster(root: Path):
    """Yields a SlurmCluster; on exit cancels every job and stops every daemon it started."""
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True)
    (root / "munge").chmod(0o755)  # the socket's directory: reachable by job processes
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ports = free_ports(1 + len(NODES))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, ports))
    cluster = SlurmCluster(root)
    daemons: list[subprocess.Popen] = []

    def daemon(*command: str) -> None:
        with open(root / "log" / f"{command[0]}-{len(daemons)}.out", "w") as log:
            daemons.append(subprocess.Popen([find_binary(command[0]), *command[1:]], env=cluster.env,
                                            stdout=log, stderr=subprocess.STDOUT))

    try:
        daemon("munged", "--foreground", "--force", f"--key-file={key}",
               f"--socket={root}/munge/munge.socket", f"--pid-file={root}/munge/munged.pid",
               f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/munged.seed")
        deadline = time.monotonic() + 30
        while not (root / "munge" / "munge.socket").exists():
            assert time.monotonic() < deadline and daemons[0].poll() is None, "munged did not start"
            time.sleep(0.05)
        daemon("slurmctld", "-D", "-f", str(conf))
        for node in NODES:
            daemon("slurmd", "-D", "-N", node, "-f", str(conf))
        deadline = time.monotonic() + 60
        while not cluster.nodes_idle():
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                raise AssertionError(f"the Slurm cluster did not come up\n{cluster.logs()}")
            time.sleep(0.2)
        yield cluster
    finally:
        if daemons[1:]:
            cluster.run("scancel", "--full", "--user", getpass.getuser(), check=False)
            deadline = time.monotonic() + 30
            while cluster.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for process in reversed(daemons):  # slurmd first, munged last
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
