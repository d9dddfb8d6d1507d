"""Real torchrun --no-python launches of 2 ranks (torchrun from the venv's torch) train over the
TCP-store backend and agree with the same runs under mpirun (MPI backend): expert parallelism (the
all-to-all) and tensor parallelism (all-reduces, and the all-gather of the sequence-parallel MoE
tokens and of the vocab-parallel log-sum-exp)."""
import os
import subprocess
import sys

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, metrics

small = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=10", "train.eval_sequences=4",
         "schedule.warmup_steps=3", "train.steps=10", "checkpoint.interval=0", "checkpoint.save_final=false",
         "train.threads=1"]
layouts = {"ep2": ["parallel.expert=2"], "tp2": ["parallel.tensor=2"]}


def args(run, layout):
    out = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + small + layout:
        out += ["--set", o]
    return out


torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
for name, layout in layouts.items():
    tr = fresh_dir(f"launch_torchrun_{name}")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "--no-python"] + args(tr, layout),
                          capture_output=True, text=True, timeout=600)
    check(proc.returncode == 0, f"{name}: torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    mp = fresh_dir(f"launch_mpirun_{name}")
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2"] +
                          args(mp, layout), capture_output=True, text=True, timeout=600)
    check(proc.returncode == 0, f"{name}: mpirun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    a, b = metrics(tr), metrics(mp)
    check(len(a) == len(b) == 10, f"{name}: 10 steps each")
    worst = 0.0
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "max_vio", "val_loss"):
            if key in x:
                rel = abs(x[key] - y[key]) / max(abs(y[key]), 1e-8)
                worst = max(worst, rel)
                check(rel <= 1e-5, f"{name} step {x['step']} {key}: torchrun {x[key]!r} vs mpirun {y[key]!r}")
    print(f"{name}: torchrun and mpirun agree over 10 steps, worst relative difference {worst:.2e}")
print("ok")
