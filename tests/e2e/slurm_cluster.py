"""Slurm across nodes, for real: Debian's slurmctld and slurmd (with munge) on two simulated nodes
(launch/cluster-sim.sh, cluster `slurm`), and `sbatch launch/slurm_example.sbatch` as users submit it.
- 2 nodes x 2 tasks (srun --mpi=pmix, Open MPI through Slurm's PMIx plugin), EP 2 x DP 2 on the tiny
  recipe matches one process (dp x the gradient accumulation) within 1e-5 relative per step, and the
  ranks sit on both nodes with the local rank srun gave them (SLURM_LOCALID; moe-train's launch line).
- Preemption: a job like it (20 steps) gets USR1 from `--signal=USR1@60` (its time limit is cut to 1
  minute while it trains, so that Slurm's warning is due at once; Slurm sends it at its next time-limit
  check, within about 30 s, while the ranks wait stopped), moe-train saves a checkpoint and exits 0, the
  script requeues the job, the requeued job resumes, and every step equals an uninterrupted job's bitwise.
One slurmd per node: each node has its own network namespace and host name, so Debian's build (without
--enable-multiple-slurmd) runs one ordinary slurmd in each, on the default port of its own address.
Needs root; skipped (77) without it."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import BIN, SMALL_DATA, SOURCE, TINY, check, fresh_dir, matches_one_process, metrics, moe_train

if os.geteuid() != 0:
    print("slurm_cluster: needs root; skipped")
    sys.exit(77)

SIM = ["bash", os.path.join(SOURCE, "launch/cluster-sim.sh")]
EXAMPLE = os.path.join(SOURCE, "launch/slurm_example.sbatch")
PARITY_STEPS, STEPS = 10, 20  # parity as cluster_parity.py; the preempted job must still train when warned
BASE = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
        "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=10", "train.eval_sequences=4",
        "schedule.warmup_steps=3", "checkpoint.interval=0", "train.threads=1", "routing.bias_update_rate=0.01"]
TOLERANCE = 1e-5  # as cluster_parity.py
KEYS = ("loss", "lm_loss", "aux_loss", "grad_norm", "max_vio", "lr", "val_loss", "val_max_vio")

work = fresh_dir("slurm_cluster")  # slurm.conf, state, logs and the jobs' output
# munged's and slurmd's sockets, slurmd's spool and the jobs' TmpFS: in a short path, since a Unix socket's
# path is at most 107 bytes (slurmd adds about 33 to its spool directory's).
sockets = tempfile.mkdtemp(prefix="moesim-slurm.")
conf = os.path.join(work, "slurm.conf")
munge_socket = os.path.join(sockets, "munge", "munge.socket")
# Every cluster-sim call (and Slurm command) of this test: its own named cluster, its own slurm.conf.
os.environ.update(MOESIM_CLUSTER="slurm", SLURM_CONF=conf)
# Ranks of different nodes talk TCP on the node links (as cluster_parity.py; sbatch passes the environment).
os.environ.update(OMPI_MCA_btl="self,vader,tcp", OMPI_MCA_btl_tcp_if_include="eth0")


def ranges(values):
    """Rank lists as the launch line writes them (parallel::describe_hosts): "0-1,3" for 0, 1, 3."""
    out, values = [], list(values)
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def sim(*args, timeout=60, check_rc=True):
    proc = subprocess.run(SIM + list(args), capture_output=True, text=True, timeout=timeout, cwd=SOURCE)
    check(not check_rc or proc.returncode == 0,
          f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def on_node0(*cmd, **kw):
    return sim("exec", "node0", *cmd, **kw)


def write_config():
    for d in ("state", "log", "cgroup/systemd"):
        os.makedirs(os.path.join(work, d))
    for d in ("munge", "spool/node0", "spool/node1", "tmp/node0", "tmp/node1"):
        os.makedirs(os.path.join(sockets, d))
    os.chmod(os.path.join(sockets, "munge"), 0o700)
    with open(conf, "w") as f:
        f.write(f"""ClusterName=moesim
SlurmctldHost=node0(10.213.0.10)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={work}/state
SlurmdSpoolDir={sockets}/spool/%n
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.%n.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.%n.log
# A requeued job waits cred_expire seconds before it starts again (default 120).
# Slurm's PMIx plugin makes its per-step directory under TmpFS: node-local, as /tmp is on a real node
# (the simulated nodes share this machine's /tmp).
TmpFS={sockets}/tmp/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# The nodes are what this file says, whatever CPUs the machine has.
SlurmdParameters=config_overrides
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=600
NodeName=node0 NodeAddr=10.213.0.10 CPUs=2 State=UNKNOWN
NodeName=node1 NodeAddr=10.213.0.11 CPUs=2 State=UNKNOWN
PartitionName=main Nodes=node[0-1] Default=YES MaxTime=INFINITE State=UP
""")
    # No cgroups are used (proctrack/linuxproc, task/none), but slurmd 22.05 initialises its cgroup plugin
    # regardless; inside a node (`ip netns exec` remounts /sys) there is no /sys/fs/cgroup, so it gets an
    # empty v1 mount point of its own (cgroup/v1 only checks that the `systemd` directory exists).
    with open(os.path.join(work, "cgroup.conf"), "w") as f:
        f.write(f"CgroupPlugin=cgroup/v1\nCgroupMountpoint={work}/cgroup\n")


def start_daemons():
    # munged in node0 (so that cluster-sim's `down` ends it), its own key and socket; the socket is a
    # path on the shared file system, so every node's Slurm reaches it.
    m = os.path.join(sockets, "munge")
    subprocess.run(["mungekey", "--create", f"--keyfile={m}/munge.key"], check=True)
    on_node0("munged", "--force", f"--socket={munge_socket}", f"--key-file={m}/munge.key",
             f"--log-file={work}/log/munged.log", f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed")
    on_node0("slurmctld")
    for node in ("node0", "node1"):
        sim("exec", node, "slurmd", "-N", node)
    deadline = time.time() + 60
    while True:
        state = on_node0("sinfo", "-h", "-N", "-o", "%N %t", check_rc=False).stdout.split()
        if state == ["node0", "idle", "node1", "idle"]:
            return
        check(time.time() < deadline, f"the nodes are not idle after 60 s: sinfo says {state}")
        time.sleep(0.5)


def job_info(job):
    out = on_node0("scontrol", "show", "job", "-o", job).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def submit(run_dir, out, steps, extra_sbatch=()):
    """sbatch launch/slurm_example.sbatch on 2 nodes x 2 tasks of one CPU: EP 2 x DP 2 (a later --set wins
    over the example's TP 2 x EP 4), the test corpus and BASE."""
    args = []
    for o in SMALL_DATA + BASE + [f"train.steps={steps}", "parallel.tensor=1", "parallel.expert=2"]:
        args += ["--set", o]
    env = {**os.environ, "MOETRAIN_RECIPE": TINY, "MOETRAIN_RUN_DIR": run_dir, "MOETRAIN_BIN": BIN}
    cmd = SIM + ["exec", "node0", "sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=2",
                 "--cpus-per-task=1", f"--output={out}", *extra_sbatch, EXAMPLE] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=SOURCE, env=env)
    check(proc.returncode == 0, f"sbatch failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip()


def wait_done(job, out, restarts=0, timeout=150):
    deadline = time.time() + timeout
    while True:
        info = job_info(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        check(time.time() < deadline, f"job {job} not done after {timeout} s: {info.get('JobState')}")
        time.sleep(0.5)
    log = open(out).read()
    check(info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0",
          f"job {job} ended {info['JobState']} exit {info.get('ExitCode')}:\n{log}")
    check(info.get("Restarts") == str(restarts), f"job {job}: {info.get('Restarts')} restarts, expected {restarts}")
    return log


def steps_logged(run_dir):
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def rank_pids(run_dir):
    """The moe-train processes training in run_dir (on any node: process ids are not isolated)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if argv[0].endswith(b"/moe-train") and run_dir.encode() in argv:
            pids.append(int(entry))
    return pids


def usr1_pending(pid):
    """Whether SIGUSR1 is pending for the (stopped) process: /proc/PID/status ShdPnd or SigPnd."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = [int(line.split()[1], 16) for line in f if line.startswith(("ShdPnd:", "SigPnd:"))]
    except FileNotFoundError:
        return False
    return any(m & (1 << (signal.SIGUSR1 - 1)) for m in masks)


def continue_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def show_logs():
    for name in sorted(os.listdir(os.path.join(work, "log"))) if os.path.isdir(os.path.join(work, "log")) else []:
        with open(os.path.join(work, "log", name), errors="replace") as f:
            print(f"--- {name} (last 25 lines)\n" + "".join(f.readlines()[-25:]), file=sys.stderr)


def terminated(signum, frame):
    sys.exit(f"slurm_cluster: killed by signal {signum}")


signal.signal(signal.SIGTERM, terminated)
signal.signal(signal.SIGINT, terminated)
started = time.time()
try:
    sim("up", "2")
    write_config()
    start_daemons()
    print(f"slurmctld and 2 slurmd up, both nodes idle ({time.time() - started:.1f} s)")
    # 1. The example, uninterrupted: parity with one process, ranks on both nodes with srun's local ranks.
    parity = fresh_dir("slurm_cluster_parity")
    out = os.path.join(work, "parity.out")
    log = wait_done(submit(parity, out, PARITY_STEPS), out)
    # What srun gives each task of such a step (host, SLURM_LOCALID) is what moe-train's launch line says.
    where = on_node0("srun", "--nodes=2", "--ntasks-per-node=2", "bash", "-c",
                     'echo "$SLURM_PROCID $(hostname) $SLURM_LOCALID"').stdout.split("\n")
    where = sorted((int(r), h, int(l)) for r, h, l in (line.split() for line in where if line))
    check([(h, l) for _, h, l in where] == [("node0", 0), ("node0", 1), ("node1", 0), ("node1", 1)],
          f"srun's tasks are not 2 per node with SLURM_LOCALID 0 and 1: {where}")
    hosts = {}
    for rank, host, local in where:
        hosts.setdefault(host, []).append((rank, local))
    line = "launch: slurm, 4 ranks on 2 hosts: " + ", ".join(
        f"{host} ranks {ranges(r for r, _ in places)} (local {ranges(l for _, l in places)})"
        for host, places in hosts.items())
    check(line in log, f"moe-train's ranks are not where srun puts them, with its local ranks ({line!r}):\n{log}")
    print(f"ranks on both nodes, local ranks from SLURM_LOCALID: {line}")
    single = fresh_dir("slurm_cluster_single_accum4")
    moe_train(single, BASE + [f"train.steps={PARITY_STEPS}", "train.grad_accum_steps=4"])
    matches_one_process(single, parity, "EP 2 x DP 2 by sbatch on 2 nodes x 2 tasks", PARITY_STEPS, TOLERANCE)

    # 2. Preemption by --signal=USR1@60 and requeue by the script; the resumed job equals an uninterrupted one.
    straight = fresh_dir("slurm_cluster_straight")
    out = os.path.join(work, "straight.out")
    wait_done(submit(straight, out, STEPS), out)
    preempted = fresh_dir("slurm_cluster_preempted")
    out = os.path.join(work, "preempted.out")
    job = submit(preempted, out, STEPS, ["--time=10", "--signal=USR1@60"])
    deadline, polled = time.time() + 60, 0.0
    while steps_logged(preempted) < 1:
        if time.time() - polled > 1:  # training has not begun: is the job still pending or starting?
            polled = time.time()
            state = job_info(job).get("JobState")
            check(time.time() < deadline and state in ("PENDING", "RUNNING"),
                  f"job {job} did not start training: {state}\n" + (open(out).read() if os.path.exists(out) else ""))
        time.sleep(0.02)
    # Slurm checks time limits (and sends --signal's warning) every 30 s or so: the ranks wait for it stopped
    # (SIGSTOP, no CPU). Slurm continues them when it signals them (slurmstepd sends SIGCONT with the
    # signal); should it not, they are continued here once SIGUSR1 is pending on each.
    ranks = rank_pids(preempted)
    check(len(ranks) == 4, f"4 moe-train processes of job {job}, found {ranks}")
    try:
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        # The end is now a minute after the start: the warning (60 s before it) is due, and Slurm sends it.
        on_node0("scontrol", "update", f"JobId={job}", "TimeLimit=1")
        cut = time.time()
        while "preemption signal received" not in open(out).read():
            check(time.time() < cut + 90, f"no preemption 90 s after the time limit was cut:\n{open(out).read()}")
            if all(usr1_pending(pid) for pid in ranks):
                continue_all(ranks)
            time.sleep(0.1)
        print(f"preemption {time.time() - cut:.1f} s after the time limit was cut")
        # Back to 10 minutes, so that the requeued job is not warned at once too.
        on_node0("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    finally:
        continue_all(ranks)
    log = wait_done(job, out, restarts=1)
    stop = re.search(r"preemption signal received: stopped at step (\d+)", log)
    check(stop and 1 <= int(stop.group(1)) < STEPS, f"the first run did not stop early:\n{log}")
    check("requeued to resume" in log and "(restart 1)" in log and "resumed from" in log,
          f"the job was not requeued and resumed:\n{log}")
    a, b = metrics(straight), metrics(preempted)
    check([r["step"] for r in b] == list(range(1, STEPS + 1)), f"steps after requeue: {[r['step'] for r in b]}")
    for ra, rb in zip(a, b):
        for key in KEYS:
            check(ra.get(key) == rb.get(key), f"step {ra['step']} {key}: {ra.get(key)!r} != {rb.get(key)!r}")
    print(f"preempted at step {stop.group(1)} by --signal=USR1@60, requeued, resumed: {STEPS} steps identical "
          f"to the uninterrupted job to the last bit")
    print(f"PASS ({time.time() - started:.0f} s)")
except SystemExit as e:
    if e.code not in (0, None):
        show_logs()
    raise
finally:
    sim("down", check_rc=False, timeout=120)
    shutil.rmtree(sockets, ignore_errors=True)
