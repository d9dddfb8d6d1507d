"""A real torchrun --no-python launch of 2 ranks (torchrun from the venv's torch) trains with expert
parallelism over the TCP-store backend and agrees with the same run under mpirun (MPI backend)."""
import os
import subprocess
import sys

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, metrics

small = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=10", "train.eval_sequences=4",
         "schedule.warmup_steps=3", "train.steps=10", "checkpoint.interval=0", "checkpoint.save_final=false",
         "train.threads=1", "parallel.expert=2"]


def args(run):
    out = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + small:
        out += ["--set", o]
    return out


torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
tr = fresh_dir("launch_torchrun")
proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "--no-python"] + args(tr),
                      capture_output=True, text=True, timeout=600)
check(proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
mp = fresh_dir("launch_mpirun")
proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2"] + args(mp),
                      capture_output=True, text=True, timeout=600)
check(proc.returncode == 0, f"mpirun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
a, b = metrics(tr), metrics(mp)
check(len(a) == len(b) == 10, "10 steps each")
worst = 0.0
for x, y in zip(a, b):
    for key in ("loss", "grad_norm", "max_vio", "val_loss"):
        if key in x:
            rel = abs(x[key] - y[key]) / max(abs(y[key]), 1e-8)
            worst = max(worst, rel)
            check(rel <= 1e-5, f"step {x['step']} {key}: torchrun {x[key]!r} vs mpirun {y[key]!r}")
print(f"torchrun and mpirun agree over 10 steps, worst relative difference {worst:.2e}")
print("ok")
