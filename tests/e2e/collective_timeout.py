"""A stopped rank never hangs the job (parallel.timeout_s, docs/reliability.md). One rank of a 2-rank run
is stopped with SIGSTOP (as a frozen node or a stuck GPU would be) with parallel.timeout_s = 10:

- the job exits non-zero within the timeout plus 30 s, under torchrun too: there the live rank kills the
  stopped rank of its machine (which would otherwise hold torchrun's agent for the 30 s it gives a worker
  between SIGTERM and SIGKILL) and says so; mpirun kills it by itself;
- the live rank prints the group, operation and step it waited in, and names the stopped rank and its host;
- its flight record (RUN_DIR/flight_recorder/rank0.json) ends with that collective, in flight;
- the launcher leaves no process behind, checkpoints/latest verifies, and the same command run again
  resumes and completes every step.

Usage: collective_timeout.py mpirun|torchrun. mpirun (MPI backend): an EP 2 and a TP 2 run, then 4 ranks
(EP 2 × DP 2), where every live rank (0, 2, 3) reports and names rank 1 or, waiting in a group without
it, the peer that has not reached the collective and where that peer waits; torchrun (TCP-store
backend): an EP 2 run."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from common import check, fresh_dir, metrics
from fault_common import end_leftovers, launch_cmd, new_mark, rank_processes, verify_latest, wait_for_step

TIMEOUT = 10
STEPS = 40
launcher = sys.argv[1]
layouts = {"mpirun": {"ep2": ["parallel.expert=2"], "tp2": ["parallel.tensor=2"]},
           "torchrun": {"ep2": ["parallel.expert=2"]}}[launcher]
limit = TIMEOUT + 30
BLOCK = re.compile(r"moe-train: rank (\d): (?:collective timed out after|stopping: rank \d \([^)]+\) reported a collective timeout)"
                   r".*\n((?:  .*\n)*)")
backend = "mpi" if launcher == "mpirun" else "store"
REPORT = re.compile(r"rank 0: collective timed out after (\d+\.\d) s \(parallel\.timeout_s = 10\): (\w+) in group (\w+) "
                    r"\((\w+), world ranks 0 1\), collective #(\d+) of the group, at step (\d+) \((\w+)\)\n"
                    r"  waiting on rank 1 \(([^)]+)\): no answer \(stopped, dead, or busy outside communication\)")
HOST = socket.gethostname()  # every rank runs here: each late peer is named with this host
NO_ANSWER = f"  waiting on rank 1 ({HOST}): no answer"

def stop_and_wait(job, pid, mark, name):
    """SIGSTOPs rank 1 (`pid`) and waits for the job to end: (stdout, stderr, seconds since the stop)."""
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        out, err = job.communicate(timeout=limit + 60)
    except subprocess.TimeoutExpired:
        end_leftovers(mark)
        job.kill()
        check(False, f"{name}: the job still runs {limit + 60} s after rank 1 was stopped")
    return out, err, time.time() - stopped_at


for name, layout in layouts.items():
    run = fresh_dir(f"timeout_{launcher}_{name}")
    overrides = layout + [f"parallel.timeout_s={TIMEOUT}", f"train.steps={STEPS}", "checkpoint.interval=4",
                          "train.eval_interval=0", "logging.log_interval=1"]
    mark = new_mark()
    env = {**os.environ, "MOETRAIN_TEST_MARK": mark}
    cmd = launch_cmd(launcher, 2, run, overrides, ["MOETRAIN_TEST_MARK"])
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_step(run, 6, job)
    ranks = rank_processes(mark)
    check(1 in ranks, f"{name}: found rank 1 ({ranks})")
    out, err, took = stop_and_wait(job, ranks[1], mark, name)
    left = end_leftovers(mark)
    check(not left, f"{name}: ranks {sorted(left)} outlived the job")
    check(job.returncode != 0, f"{name}: exit code {job.returncode} after a stopped rank")
    found = REPORT.search(err)
    check(found is not None, f"{name}: no timeout report naming rank 1 in stderr:\n{err[-4000:]}")
    waited, op, group, used, sequence, step, phase, host = found.groups()
    check(host == HOST, f"{name}: rank 1 is named on host {host}, not {HOST}")
    check(used == backend, f"{name}: backend {used}, expected {backend}")
    check(int(step) >= 6, f"{name}: the report names step {step}, but step 6 had been logged before the stop")
    check(took <= limit, f"{name}: the job ended {took:.1f} s after the stop, over the {limit} s allowed")
    killed = re.search(r"killed process \d+ of this machine, a rank that sent no report", err) is not None
    check(killed == (launcher == "torchrun"), f"{name}: rank 0 killed the stopped rank: {killed} (only under torchrun):\n{err[-3000:]}")
    with open(os.path.join(run, "flight_recorder", "rank0.json")) as f:
        record = json.load(f)
    last = record["collectives"][-1]
    check(last["end_s"] is None and last["op"] == op and last["group"] == group and last["sequence"] == int(sequence),
          f"{name}: the flight record ends with {last}, not the collective in flight")
    check(len(record["collectives"]) == 64, f"{name}: {len(record['collectives'])} collectives recorded, expected 64")
    latest = verify_latest(run)
    print(f"{name} ({launcher}): stopped rank 1 after step 6; job ended after {took:.1f} s (limit {limit} s) with exit "
          f"code {job.returncode}; rank 0 waited {waited} s in {op} of group {group} #{sequence} at step {step} ({phase}); "
          f"latest = {latest} verifies")
    print("  " + found.group(0).replace("\n", "\n  "))

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    check(rerun.returncode == 0, f"{name}: the rerun failed ({rerun.returncode}):\n{rerun.stdout}\n{rerun.stderr}")
    check(f"resumed from {os.path.join(run, 'checkpoints', latest)}" in rerun.stdout,
          f"{name}: the rerun did not resume from {latest}:\n{rerun.stdout}")
    steps = [r["step"] for r in metrics(run)]
    check(steps == list(range(1, STEPS + 1)), f"{name}: metrics.jsonl after the rerun holds steps {steps}")
    print(f"  rerun: resumed from {latest} and completed {STEPS} steps")

if launcher == "mpirun":  # 4 ranks: the others hear of the timeout and report too
    run = fresh_dir("timeout_mpirun_np4")
    mark = new_mark()
    cmd = launch_cmd("mpirun", 4, run, ["parallel.expert=2", f"parallel.timeout_s={TIMEOUT}", "train.steps=400",
                                        "checkpoint.interval=4", "train.eval_interval=0"], ["MOETRAIN_TEST_MARK"])
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "MOETRAIN_TEST_MARK": mark})
    wait_for_step(run, 5, job)
    out, err, took = stop_and_wait(job, rank_processes(mark)[1], mark, "4 ranks")
    check(not end_leftovers(mark), "4 ranks: ranks outlived the job")
    check(job.returncode != 0 and took <= limit, f"4 ranks: exit code {job.returncode} after {took:.1f} s")
    blocks = {int(m.group(1)): m.group(2) for m in BLOCK.finditer(err)}
    check(sorted(blocks) == [0, 2, 3], f"4 ranks: ranks {sorted(blocks)} reported, expected 0, 2 and 3:\n{err[-6000:]}")
    for r, block in blocks.items():  # each names rank 1, or a peer that has not reached its collective
        check(NO_ANSWER in block or re.search(rf"  waiting on rank \d \({re.escape(HOST)}\): has not reached it", block),
              f"4 ranks: rank {r} names no late peer:\n{block}")
    check(any(NO_ANSWER in b for b in blocks.values()), "4 ranks: nobody named rank 1")
    for r in (0, 2, 3):
        check(os.path.exists(os.path.join(run, "flight_recorder", f"rank{r}.json")), f"4 ranks: no flight record of rank {r}")
    verify_latest(run)
    print(f"4 ranks (EP 2 x DP 2): job ended {took:.1f} s after rank 1 stopped; ranks 0, 2 and 3 reported:")
    print("\n".join("  " + line for line in err.splitlines() if line.startswith(("moe-train: rank", "  waiting on"))))
print("ok")
