"""A lost node (launch/cluster-sim.sh, simulated cluster "lost"; docs/reliability.md#a-lost-node): mpirun
trains EP 2 x DP 2 on 2 nodes x 2 ranks, placed round robin (--map-by node: ranks 0, 2 on node0, ranks 1,
3 on node1), so that each expert all-to-all crosses the nodes; parallel.timeout_s = 10, a checkpoint every
10 steps. Rank 1 stops itself inside the expert all-to-all of step 25 (MOETRAIN_FAULT=all_to_all:1:25:stop),
so that its peers wait in that collective, and then node1 is lost:

- A: every process of node1 (its Open MPI daemon included) is killed with SIGKILL;
- B: node1's link goes down (its eth0; rank 1 is continued: node1 lives on, cut off).

In each, node0's ranks and mpirun must end within timeout_s + 30 s of the loss with a message naming the
late peer(s) and their host node1 -- in A, Open MPI sees its daemon's connection close and ends the job
first, naming node1 ("ORTE has lost communication with a remote daemon ... on node node1"); in B the
ranks' watchdog names rank 1 (node1) and rank 3 (node1), and mpirun ends once its TCP connection to
node1's daemon fails, which the nodes' net.ipv4.tcp_retries2 = 5 bounds (Linux's default, 15, takes
about 15 minutes). No process is left anywhere. checkpoints/latest (step 20) verifies, and the run
resumes from it on node0 alone in another layout -- A: 2 ranks (EP 2, DP 2, grad_accum_steps 2), B: one
process (grad_accum_steps 4) -- and completes its 40 steps; every step, before the checkpoint and after,
matches one uninterrupted process with the same global batch (grad_accum_steps 4) within the parity
tolerance. Needs root; skipped (77) without it."""
import os
import re
import signal
import subprocess
import sys
import time

if os.geteuid() != 0:
    print("cluster_lost_node: needs root; skipped")
    sys.exit(77)

from common import SOURCE, check, fresh_dir, metrics, moe_train
from fault_common import SMALL, end_leftovers, new_mark, rank_processes, train_args, verify_latest

os.environ["MOESIM_CLUSTER"] = "lost"  # a cluster of its own: other tests may use the default one
SIM = ["bash", os.path.join(SOURCE, "launch/cluster-sim.sh")]
NODE_NS = "moesim.lost-node{}"
TIMEOUT = 10
LIMIT = TIMEOUT + 30
STEPS, INTERVAL, FAULT_STEP = 40, 10, 25
TOLERANCE = 1e-5  # the parity tolerance (cluster_parity.py, parallel_parity.py)
TCP_RETRIES2 = 5  # retransmissions before a TCP connection is declared dead: about 12.6 s (default 15: 924.6 s)
RUN = [f"train.steps={STEPS}", f"checkpoint.interval={INTERVAL}", f"parallel.timeout_s={TIMEOUT}",
       "train.eval_interval=0", "logging.log_interval=1"]
MPIRUN = ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
CROSS_NODE = ["--map-by", "node", "--mca", "plm_rsh_agent", os.path.join(SOURCE, "launch/cluster-sim-rsh.sh"),
              "--mca", "btl", "self,vader,tcp", "--mca", "btl_tcp_if_include", "eth0",
              "--mca", "oob_tcp_if_include", "eth0"]
# A rank's report: its first line and the indented lines under it.
BLOCK = re.compile(r"moe-train: rank (\d): (?:collective timed out after|stopping: rank \d \(\w+\) reported a "
                   r"collective timeout).*\n((?:  .*\n)*)")
A2A = re.compile(r"moe-train: rank 0: collective timed out after \d+\.\d s \(parallel\.timeout_s = 10\): all_to_all_v "
                 rf"in group ep \(mpi, world ranks 0 1\), collective #\d+ of the group, at step {FAULT_STEP} \(training\)\n"
                 r"  waiting on rank 1 \(node1\): no answer \(stopped, dead, or busy outside communication\)")


def sim(*args, **kw):
    return subprocess.run(SIM + list(args), capture_output=True, text=True, **kw)


def node_pids(i):
    out = subprocess.run(["ip", "netns", "pids", NODE_NS.format(i)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stopped(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def wait_until(condition, limit_s, what, job):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if condition():
            return
        check(job.poll() is None, f"the job ended ({job.returncode}) before {what}")
        time.sleep(0.05)
    check(False, f"{what}: not within {limit_s} s")


def lose_node1(case, run, log):
    """Trains on 2 nodes, loses node1 (`case` A or B) with rank 1 stopped in the all-to-all of FAULT_STEP;
    returns (stderr of mpirun, mpirun's exit code, {rank: s from the loss to its end}, s to mpirun's end)."""
    mark = new_mark()
    hostfile = run + ".hosts"
    with open(hostfile, "w") as f:
        f.write("node0 slots=2\nnode1 slots=2\n")
    env = {**os.environ, "MOETRAIN_TEST_MARK": mark, "MOETRAIN_FAULT": f"all_to_all:1:{FAULT_STEP}:stop"}
    cmd = SIM + ["exec", "node0"] + MPIRUN + ["--hostfile", hostfile, "-np", "4"] + CROSS_NODE + \
        ["-x", "MOETRAIN_TEST_MARK", "-x", "MOETRAIN_FAULT"] + train_args(run, ["parallel.expert=2"] + RUN)
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        job = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)  # becomes mpirun (exec all the way)
    try:
        wait_until(lambda: 1 in rank_processes(mark) and stopped(rank_processes(mark)[1]), 180,
                   f"rank 1 stopped in the all-to-all of step {FAULT_STEP}", job)
        ranks = rank_processes(mark)
        on_node0, on_node1 = set(node_pids(0)), set(node_pids(1))
        check(sorted(ranks) == [0, 1, 2, 3] and {ranks[0], ranks[2]} <= on_node0 and {ranks[1], ranks[3]} <= on_node1,
              f"ranks {ranks} are not 0, 2 on node0 and 1, 3 on node1 ({on_node0}, {on_node1})")
        time.sleep(1)  # the peers wait in the all-to-all (rank 0) or the next collective that needs node1
        lost_at = time.time()
        if case == "A":
            for pid in node_pids(1):
                os.kill(pid, signal.SIGKILL)
        else:
            subprocess.run(["ip", "-n", NODE_NS.format(1), "link", "set", "eth0", "down"], check=True)
            os.kill(ranks[1], signal.SIGCONT)  # node1 lives on, cut off
        ended = {}
        while time.time() < lost_at + LIMIT + 30 and (job.poll() is None or len(ended) < 2):
            for r in (0, 2):
                if r not in ended and not alive(ranks[r]):
                    ended[r] = time.time() - lost_at
            time.sleep(0.05)
        mpirun_took = time.time() - lost_at if job.poll() is not None else None
        left_on_node1 = [r for r in (1, 3) if alive(ranks[r])] + [p for p in node_pids(1) if p not in ranks.values()]
        check(mpirun_took is not None, f"{case}: mpirun still runs {LIMIT + 30} s after the loss")
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        for pid in node_pids(1):  # node1's leftovers (case B): the test's to clean up, as a reboot would
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "-n", NODE_NS.format(1), "link", "set", "eth0", "up"], check=False)
        left = end_leftovers(mark)
    check(not left, f"{case}: ranks {sorted(left)} outlived the job")
    time.sleep(0.5)
    check(not node_pids(0) and not node_pids(1), f"{case}: processes left in the nodes: {node_pids(0)} {node_pids(1)}")
    with open(log + ".err") as f:
        err = f.read()
    print(f"{case}: node1's ranks or processes still alive when mpirun ended: {left_on_node1 or 'none'}")
    return err, job.returncode, ended, mpirun_took


def resume(case, run):
    """Resumes `run` on node0 alone: A in 2 ranks (EP 2, DP 2), B in one process."""
    if case == "A":
        cmd = SIM + ["exec", "node0"] + MPIRUN + ["-np", "2", "--mca", "btl", "self,vader"] + \
            train_args(run, ["parallel.expert=2"] + RUN + ["train.grad_accum_steps=2"])
    else:
        cmd = SIM + ["exec", "node0"] + train_args(run, RUN + ["train.grad_accum_steps=4"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    check(proc.returncode == 0, f"{case}: the resume failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def worst_difference(reference, run, steps):
    a = {r["step"]: r for r in metrics(reference)}
    b = {r["step"]: r for r in metrics(run)}
    worst = (0.0, None, None)
    for step in steps:
        for key in ("loss", "lm_loss", "aux_loss", "grad_norm", "max_vio"):
            x, y = a[step][key], b[step][key]
            rel = abs(x - y) / max(abs(x), 1e-8)
            check(rel <= TOLERANCE, f"{run} step {step} {key}: {x!r} vs {y!r} (rel {rel:.2e})")
            worst = max(worst, (rel, step, key), key=lambda w: w[0])
    return worst


def said(worst):
    return f"{worst[0]:.1e} (step {worst[1]} {worst[2]})" if worst[1] else "0"


single = fresh_dir("cluster_lost_node_single")
moe_train(single, SMALL + RUN + ["train.grad_accum_steps=4"])  # dp 4 x 1 micro-batch = 1 x 4
check(len(metrics(single)) == STEPS, f"the reference run logged {len(metrics(single))} steps")

subprocess.run(SIM + ["up", "2"], check=True, capture_output=True)
try:
    for i in (0, 1):  # a dead peer's TCP connection fails after about 12.6 s of retransmissions, not 15 min
        r = sim("exec", f"node{i}", "sysctl", "-qw", f"net.ipv4.tcp_retries2={TCP_RETRIES2}")
        check(r.returncode == 0, f"sysctl in node{i}: {r.stderr}")
    for case in ("A", "B"):
        run = fresh_dir(f"cluster_lost_node_{case}")
        err, code, ended, mpirun_took = lose_node1(case, run, run)
        what = {"A": "killed every process of node1", "B": "took node1's link down"}[case]
        check(sorted(ended) == [0, 2], f"{case}: node0's ranks {sorted(set((0, 2)) - set(ended))} outlived the bound")
        print(f"{case}: {what} with rank 1 stopped in the all-to-all of step {FAULT_STEP}; node0's ranks ended "
              f"{ended[0]:.1f} s (rank 0) and {ended[2]:.1f} s (rank 2) after, mpirun {mpirun_took:.1f} s after "
              f"(limit {LIMIT} s), exit code {code}")
        for r, took in ended.items():
            check(took <= LIMIT, f"{case}: rank {r} ended {took:.1f} s after the loss, over {LIMIT} s")
        check(mpirun_took <= LIMIT, f"{case}: mpirun ended {mpirun_took:.1f} s after the loss, over {LIMIT} s")
        check(code != 0, f"{case}: mpirun's exit code is 0 after a lost node")
        blocks = {int(m.group(1)): m.group(2) for m in BLOCK.finditer(err)}
        lost_daemon = re.search(r"ORTE has lost communication with a remote daemon\.[\s\S]{0,200}?"
                                r"Remote daemon: \S+ on node node1", err)
        if case == "A":
            # Open MPI's own path: node1's daemon's connection closes at once, mpirun ends the job before any
            # collective times out. Should a rank's watchdog speak first, it must name node1 too.
            check(lost_daemon is not None or re.search(r"waiting on rank [13] \(node1\): no answer", err),
                  f"A: neither Open MPI nor a rank names node1:\n{err[-4000:]}")
            path = "Open MPI's (lost daemon)" if lost_daemon else "the watchdog's"
            print(f"A: the job was ended by {path} path:")
            print("\n".join("  " + l.strip() for l in err.splitlines()
                             if re.search(r"ORTE has lost|daemon *:|Peer host|waiting on", l)))
        else:
            check(code == 124, f"B: mpirun's exit code {code}, expected the watchdog's 124")
            found = A2A.search(err)
            check(found is not None, f"B: rank 0 does not report the all-to-all, waiting on rank 1 (node1):\n{err[-4000:]}")
            check(sorted(blocks) == [0, 2], f"B: ranks {sorted(blocks)} reported, expected node0's 0 and 2:\n{err[-4000:]}")
            check(re.search(r"  waiting on rank [13] \(node1\): no answer", blocks[2]),
                  f"B: rank 2 names no rank of node1:\n{blocks[2]}")
            print("B: the watchdog's path; node0's ranks reported:")
            print("\n".join("  " + l for l in err.splitlines() if l.startswith(("moe-train: rank", "  waiting on"))))
        latest = verify_latest(run)
        check(latest == f"step_{FAULT_STEP // INTERVAL * INTERVAL:08d}", f"{case}: latest is {latest}")
        out = resume(case, run)
        check(f"resumed from {os.path.join(run, 'checkpoints', latest)}" in out, f"{case}: no resume from {latest}:\n{out}")
        steps = [r["step"] for r in metrics(run)]
        check(steps == list(range(1, STEPS + 1)), f"{case}: metrics.jsonl holds steps {steps}")
        saved = int(latest.split("_")[1])
        before = worst_difference(single, run, range(1, saved + 1))
        after = worst_difference(single, run, range(saved + 1, STEPS + 1))
        layout = {"A": "2 ranks (EP 2, DP 2, grad_accum_steps 2)", "B": "1 process (grad_accum_steps 4)"}[case]
        print(f"{case}: {latest} verifies; resumed on node0 in {layout} and completed {STEPS} steps; against one "
              f"process: steps 1-{saved} worst relative difference {said(before)}, steps {saved + 1}-{STEPS} {said(after)} "
              f"(tolerance {TOLERANCE:g})")
finally:
    sim("down")
print("ok")
