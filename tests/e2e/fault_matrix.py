"""The fault matrix (docs/reliability.md): a rank killed (SIGKILL, by MOETRAIN_FAULT=POINT:RANK:STEP) at each
fault point loses nothing. For every point:

- the job ends (no hang) with a non-zero exit code, and the killed rank said where it died;
- checkpoints/latest names the newest checkpoint saved before the fault, which verifies (moe-ckpt verify),
  as does every earlier one kept;
- metrics.jsonl still holds every step up to that checkpoint, bitwise as in an uninterrupted run;
- the same command run again resumes from it, and its metrics (every step, every value but tokens/s) and
  its final checkpoint (every tensor: weights, expert biases, AdamW moments) equal the uninterrupted
  run's bitwise.

Usage: fault_matrix.py NP LAYOUT POINT... (LAYOUT: ep2 | tp2ep2 | dp). 8 steps, a checkpoint every 2,
an evaluation every 2; faults at step 5 (the checkpoint and evaluation points at step 4, which saves
and evaluates), on the last rank."""
import os
import subprocess
import sys
import time

import torch

from common import check, fresh_dir, load_checkpoint, metrics, without_timings
from fault_common import launch_cmd, verify_latest

STEPS = 8
LAYOUTS = {"ep2": ["parallel.expert=2"], "tp2ep2": ["parallel.tensor=2", "parallel.expert=2"], "dp": []}
FAULT_STEP = {"all_to_all": 5, "grad_sync": 5, "optimizer_step": 5, "data_read": 5, "checkpoint_write": 4, "evaluation": 4}
np, layout, points = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
rank = np - 1
overrides = LAYOUTS[layout] + [f"train.steps={STEPS}", "checkpoint.interval=2", "checkpoint.keep_last=10",
                               "train.eval_interval=2", "parallel.timeout_s=60"]


def run_job(run, fault=None):
    env = dict(os.environ)
    env.pop("MOETRAIN_FAULT", None)
    if fault:
        env["MOETRAIN_FAULT"] = fault
    cmd = launch_cmd("mpirun", np, run, overrides, ["MOETRAIN_FAULT"] if fault else [])
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    return proc, time.time() - start


def values(run):
    """Every logged value of every step but the throughput, by step."""
    return {r["step"]: without_timings(r) for r in metrics(run)}


reference = fresh_dir(f"faults_np{np}_{layout}_reference")
proc, took = run_job(reference)
check(proc.returncode == 0, f"reference run failed:\n{proc.stdout}\n{proc.stderr}")
ref_values = values(reference)
ref_final = load_checkpoint(os.path.join(reference, "checkpoints", f"step_{STEPS:08d}"))
print(f"reference: {np} ranks, {layout}, {STEPS} steps in {took:.1f} s")

for point in points:
    step = FAULT_STEP[point]
    saved = (step - 1) // 2 * 2  # the newest checkpoint completed before the fault
    run = fresh_dir(f"faults_np{np}_{layout}_{point}")
    fault = f"{point}:{rank}:{step}"
    proc, took = run_job(run, fault)
    check(proc.returncode != 0, f"{fault}: exit code 0 although rank {rank} was killed")
    said = f"rank {rank}: MOETRAIN_FAULT: killing this process at {point} of step {step}"
    check(said in proc.stderr, f"{fault}: the fault did not fire as expected:\n{proc.stdout}\n{proc.stderr}")
    latest = verify_latest(run)
    check(latest == f"step_{saved:08d}", f"{fault}: latest is {latest}, expected step_{saved:08d}")
    kept = sorted(d for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("step_") and not d.endswith(".tmp"))
    check(kept == [f"step_{s:08d}" for s in range(2, saved + 1, 2)], f"{fault}: checkpoints kept {kept}")
    for d in kept[:-1]:
        subprocess.run([os.path.join(os.environ["MOETRAIN_BIN"], "moe-ckpt"), "verify", "--checkpoint",
                        os.path.join(run, "checkpoints", d)], check=True, capture_output=True)
    before = values(run)
    for s in range(1, saved + 1):
        check(before.get(s) == ref_values[s], f"{fault}: step {s} of metrics.jsonl lost or changed by the fault")

    again, took_again = run_job(run)
    check(again.returncode == 0, f"{fault}: the rerun failed:\n{again.stdout}\n{again.stderr}")
    check(f"resumed from {os.path.join(run, 'checkpoints', latest)}" in again.stdout, f"{fault}: rerun did not resume:\n{again.stdout}")
    after = values(run)
    check(sorted(after) == list(range(1, STEPS + 1)), f"{fault}: steps after the rerun: {sorted(after)}")
    for s in after:
        check(after[s] == ref_values[s], f"{fault}: step {s} differs from the uninterrupted run:\n{after[s]}\n{ref_values[s]}")
    final = load_checkpoint(os.path.join(run, "checkpoints", f"step_{STEPS:08d}"))
    check(sorted(final) == sorted(ref_final), f"{fault}: the final checkpoint holds other tensors")
    for name, t in final.items():
        check(torch.equal(t, ref_final[name]), f"{fault}: final {name} differs from the uninterrupted run")
    print(f"{fault}: job ended after {took:.1f} s (exit {proc.returncode}); latest {latest} verifies, steps 1-{saved} kept; "
          f"rerun resumed and matched {STEPS} steps and {len(final)} final tensors bitwise ({took_again:.1f} s)")
print("ok")
