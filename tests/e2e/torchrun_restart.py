"""torchrun --max-restarts restarts a group after a rank dies, and the group resumes by itself
(docs/reliability.md): rank 1 of an EP 2 run under torchrun (TCP-store backend) is killed inside the
expert all-to-all of step 5 (MOETRAIN_FAULT; the fault fires only in the first launch). torchrun restarts
both workers, they resume from checkpoints/latest (step 4) without being told, and the run completes
with exit code 0, its metrics and final checkpoint bitwise equal to an uninterrupted torchrun run's."""
import os
import subprocess
import time

import torch

from common import check, fresh_dir, load_checkpoint, metrics, without_timings
from fault_common import launch_cmd

STEPS = 8
overrides = ["parallel.expert=2", f"train.steps={STEPS}", "checkpoint.interval=2", "train.eval_interval=2",
             "parallel.timeout_s=10"]


def values(run):
    return {r["step"]: without_timings(r) for r in metrics(run)}


reference = fresh_dir("torchrun_restart_reference")
env = {k: v for k, v in os.environ.items() if k != "MOETRAIN_FAULT"}
proc = subprocess.run(launch_cmd("torchrun", 2, reference, overrides), capture_output=True, text=True, timeout=300, env=env)
check(proc.returncode == 0, f"reference run failed:\n{proc.stdout}\n{proc.stderr}")

run = fresh_dir("torchrun_restart")
start = time.time()
proc = subprocess.run(launch_cmd("torchrun", 2, run, overrides, max_restarts=1), capture_output=True, text=True, timeout=300,
                      env={**env, "MOETRAIN_FAULT": "all_to_all:1:5"})
took = time.time() - start
check("rank 1: MOETRAIN_FAULT: killing this process at all_to_all of step 5" in proc.stderr,
      f"the fault did not fire:\n{proc.stdout}\n{proc.stderr}")
check(proc.returncode == 0, f"torchrun did not complete the run after the restart ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
resumed = f"resumed from {os.path.join(run, 'checkpoints', 'step_00000004')} (step 4)"
check(resumed in proc.stdout, f"the restarted group did not resume from step 4:\n{proc.stdout}")
a, b = values(run), values(reference)
check(sorted(a) == list(range(1, STEPS + 1)), f"steps logged: {sorted(a)}")
for s in a:
    check(a[s] == b[s], f"step {s} differs from the uninterrupted run:\n{a[s]}\n{b[s]}")
final, ref_final = (load_checkpoint(os.path.join(r, "checkpoints", f"step_{STEPS:08d}")) for r in (run, reference))
check(sorted(final) == sorted(ref_final), "the final checkpoints hold different tensors")
for name, t in final.items():
    check(torch.equal(t, ref_final[name]), f"final {name} differs from the uninterrupted run")
print(f"rank 1 killed in the all-to-all of step 5; torchrun restarted the group, which {resumed} and completed "
      f"{STEPS} steps ({took:.1f} s in all), metrics and {len(final)} final tensors bitwise equal to the uninterrupted run")
print("ok")
