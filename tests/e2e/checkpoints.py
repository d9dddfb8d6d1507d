"""Distributed checkpoints under real MPI processes (CPU):

1. Resharding: a checkpoint saved at EP=2 resumes at EP=1 (one process) and at TP=2; the continued steps
   agree with the EP=2 run within 1e-5 relative (same global batch: one process accumulates 2 micro-batches
   where 2 data-parallel ranks read one each).
2. Round trip: moe-ckpt reshard EP=2 -> EP=1 -> EP=2 and EP=2 -> TP=2 -> EP=2 give bitwise the same
   global tensors (weights, expert biases, AdamW moments); so does the chain EP=4 -> EP=2 -> EP=1.
3. kill -9 of a rank while it writes a checkpoint: the job fails, `latest` still names the previous
   checkpoint, and running again resumes from it and reproduces the uninterrupted run bitwise.
4. Preemption: SIGUSR1 to one rank (and SIGTERM to a one-process run) stops every rank at the next step
   boundary with a checkpoint and exit code 0; the same command resumes and reproduces the uninterrupted
   run bitwise. A corrupted shard stops every rank with the same error.
"""
import os
import shutil
import signal
import subprocess
import time

import torch

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, load_checkpoint, metrics, moe_train

BASE = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
        "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=0", "train.eval_sequences=4",
        "schedule.warmup_steps=3", "train.threads=1", "routing.bias_update_rate=0.01", "checkpoint.keep_last=3"]
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
KEYS = ("loss", "lm_loss", "aux_loss", "grad_norm", "max_vio")


def train_cmd(run, overrides, np=1):
    cmd = (MPIRUN + ["-np", str(np)] if np > 1 else []) + [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + BASE + overrides:
        cmd += ["--set", o]
    return cmd


def train(run, overrides, np=1, env=None, expect_ok=True):
    proc = subprocess.run(train_cmd(run, overrides, np), capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    if expect_ok:
        check(proc.returncode == 0, f"moe-train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ckpt(*args, np=1):
    cmd = (MPIRUN + ["-np", str(np)] if np > 1 else []) + [os.path.join(BIN, "moe-ckpt"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    check(proc.returncode == 0, f"moe-ckpt {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def step_dir(run, step):
    return os.path.join(run, "checkpoints", f"step_{step:08d}")


def close(a, b, label, steps, tol):
    ra = {r["step"]: r for r in metrics(a)}
    rb = {r["step"]: r for r in metrics(b)}
    worst = 0.0
    for s in steps:
        check(s in ra and s in rb, f"{label}: step {s} logged by both")
        for k in KEYS:
            rel = abs(ra[s][k] - rb[s][k]) / max(abs(ra[s][k]), 1e-8)
            worst = max(worst, rel)
            check(rel <= tol, f"{label} step {s} {k}: {ra[s][k]!r} vs {rb[s][k]!r} (rel {rel:.2e})")
    return worst


def same_tensors(a, b, label):
    ta, tb = load_checkpoint(a), load_checkpoint(b)
    check(sorted(ta) == sorted(tb), f"{label}: tensor names differ")
    for name in ta:
        check(torch.equal(ta[name], tb[name]), f"{label}: {name} differs")
    return len(ta)


# 1. Save at EP=2 after 6 steps; continue to 10 at EP=2, at EP=1 and at TP=2.
ep2 = fresh_dir("e2e_ckpt_ep2")
train(ep2, ["train.steps=6", "parallel.expert=2"], np=2)
ckpt("verify", "--checkpoint", step_dir(ep2, 6))
copies = {}
for name in ("ep1", "tp2"):
    copies[name] = fresh_dir(f"e2e_ckpt_{name}")
    shutil.copytree(ep2, copies[name])
train(ep2, ["train.steps=10", "parallel.expert=2"], np=2)
out = train(copies["ep1"], ["train.steps=10", "train.grad_accum_steps=2"])
check("resumed from" in out.stdout, "EP=1 resumes the EP=2 checkpoint")
train(copies["tp2"], ["train.steps=10", "train.grad_accum_steps=2", "parallel.tensor=2"], np=2)
for name, run in copies.items():
    worst = close(ep2, run, f"EP=2 -> {name}", range(7, 11), 1e-5)
    print(f"ok: saved at EP=2, resumed at {name}: steps 7-10 agree, worst relative difference {worst:.2e}")

# A corrupted byte in a shard: resuming with 2 ranks fails on every rank with the same message (the
# first rank to report it ends the job, so one or both lines reach stderr).
bad = fresh_dir("e2e_ckpt_corrupt")
shutil.copytree(copies["ep1"], bad)
shard = os.path.join(step_dir(bad, 10), "rank00000.safetensors")
with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) - 3)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
start = time.time()
proc = train(bad, ["train.steps=12", "parallel.expert=2"], np=2, expect_ok=False)
check(proc.returncode != 0 and time.time() - start < 120, f"corrupted shard: non-zero exit, no hang ({proc.returncode})")
lines = [l for l in proc.stderr.splitlines() if "does not match its SHA-256" in l]
check(len(lines) >= 1 and all(l.split("): ", 1)[1] == lines[0].split("): ", 1)[1] for l in lines),
      f"the ranks report the corrupted shard with the same message:\n{proc.stderr}")
print(f"ok: a corrupted shard stops the job ({len(lines)} rank(s) printed the same error before the job ended)")

# 2. Offline reshard round trips are bitwise.
src = step_dir(ep2, 6)
for name, there, np_there in (("ep1", ["parallel.expert=1"], 1), ("tp2", ["parallel.expert=1", "parallel.tensor=2"], 2)):
    mid, back = fresh_dir(f"e2e_ckpt_rt_{name}"), fresh_dir(f"e2e_ckpt_rt_{name}_back")
    ckpt("reshard", "--checkpoint", src, "--out", mid, *sum((["--set", o] for o in there), []), np=np_there)
    ckpt("reshard", "--checkpoint", step_dir(mid, 6), "--out", back, "--set", "parallel.expert=2",
         "--set", "parallel.tensor=1", np=2)
    n = same_tensors(src, step_dir(back, 6), f"EP=2 -> {name} -> EP=2")
    print(f"ok: EP=2 -> {name} -> EP=2 round trip: {n} global tensors bitwise identical")

# EP=4 (4 ranks) -> EP=2 (2 ranks) -> EP=1 (one process): every step of the chain holds the same global
# tensors, optimizer moments included.
ep4 = fresh_dir("e2e_ckpt_ep4")
train(ep4, ["train.steps=2", "parallel.expert=4"], np=4)
ep4_to_2, ep2_to_1 = fresh_dir("e2e_ckpt_ep4_to_2"), fresh_dir("e2e_ckpt_ep2_to_1")
ckpt("reshard", "--checkpoint", step_dir(ep4, 2), "--out", ep4_to_2, "--set", "parallel.expert=2", np=2)
ckpt("reshard", "--checkpoint", step_dir(ep4_to_2, 2), "--out", ep2_to_1, "--set", "parallel.expert=1")
same_tensors(step_dir(ep4, 2), step_dir(ep4_to_2, 2), "EP=4 -> EP=2")
n = same_tensors(step_dir(ep4, 2), step_dir(ep2_to_1, 2), "EP=4 -> EP=2 -> EP=1")
out = train(ep2_to_1, ["train.steps=3"])
check("resumed from" in out.stdout, "the EP=1 result trains on")
print(f"ok: EP=4 -> EP=2 -> EP=1: {n} global tensors bitwise identical at each step; training continues")

# 3. kill -9 of rank 1 halfway through writing the step-4 checkpoint.
straight = fresh_dir("e2e_ckpt_straight")
train(straight, ["train.steps=6", "parallel.expert=2", "checkpoint.interval=2"], np=2)
killed = fresh_dir("e2e_ckpt_killed")
start = time.time()
proc = train(killed, ["train.steps=6", "parallel.expert=2", "checkpoint.interval=2"], np=2,
             env={"MOETRAIN_FAULT": "checkpoint_write:1:4"}, expect_ok=False)
check(proc.returncode != 0, "the job fails when a rank is killed")
check(time.time() - start < 120, "no hang after the kill")
with open(os.path.join(killed, "checkpoints", "latest")) as f:
    check(f.read().strip() == "step_00000002", "latest still names step 2")
check(os.path.isdir(step_dir(killed, 4) + ".tmp") and not os.path.exists(step_dir(killed, 4)),
      "the interrupted step-4 save is left uncommitted")
out = train(killed, ["train.steps=6", "parallel.expert=2", "checkpoint.interval=2"], np=2)
check("resumed from" in out.stdout and "step_00000002" in out.stdout, "resumes from step 2")
check([r["step"] for r in metrics(killed)] == list(range(1, 7)), f"steps logged once each: {[r['step'] for r in metrics(killed)]}")
close(straight, killed, "killed and resumed", range(1, 7), 0.0)
print("ok: kill -9 during a checkpoint write: resumed from the last committed checkpoint, bitwise equal run")

# 4. SIGUSR1 to rank 1 mid-run.
steps = 60
straight = fresh_dir("e2e_ckpt_preempt_straight")
train(straight, [f"train.steps={steps}", "parallel.expert=2"], np=2)
preempted = fresh_dir("e2e_ckpt_preempted")
job = subprocess.Popen(train_cmd(preempted, [f"train.steps={steps}", "parallel.expert=2"], np=2),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
log = os.path.join(preempted, "metrics.jsonl")
deadline = time.time() + 120
while time.time() < deadline and (not os.path.exists(log) or len(open(log).readlines()) < 3):
    time.sleep(0.05)
rank1 = None
for pid in subprocess.run(["pgrep", "-f", os.path.join(BIN, "moe-train")], capture_output=True, text=True).stdout.split():
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if b"OMPI_COMM_WORLD_RANK=1\0" in f.read():
                rank1 = int(pid)
    except OSError:
        pass
check(rank1 is not None, "found rank 1")
os.kill(rank1, signal.SIGUSR1)
stdout, stderr = job.communicate(timeout=300)
check(job.returncode == 0, f"preempted job exits cleanly ({job.returncode}):\n{stdout}\n{stderr}")
check("preemption signal received: stopped at step" in stdout, f"preemption message:\n{stdout}")
stopped_at = len(metrics(preempted))
check(stopped_at < steps, f"stopped before the end (step {stopped_at})")
out = train(preempted, [f"train.steps={steps}", "parallel.expert=2"], np=2)
check("resumed from" in out.stdout, "the same command resumes")
close(straight, preempted, "preempted and resumed", range(1, steps + 1), 0.0)
print(f"ok: SIGUSR1 on rank 1 stopped both ranks at step {stopped_at} with a checkpoint; resumed run is bitwise equal")

# SIGTERM (Slurm's and Kubernetes' notice) to a one-process run: the same clean stop and resume.
straight1 = fresh_dir("e2e_ckpt_sigterm_straight")
train(straight1, [f"train.steps={steps}"])
termed = fresh_dir("e2e_ckpt_sigterm")
job = subprocess.Popen(train_cmd(termed, [f"train.steps={steps}"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
log = os.path.join(termed, "metrics.jsonl")
deadline = time.time() + 120
while time.time() < deadline and (not os.path.exists(log) or len(open(log).readlines()) < 3):
    time.sleep(0.05)
job.send_signal(signal.SIGTERM)
stdout, stderr = job.communicate(timeout=300)
check(job.returncode == 0 and "preemption signal received" in stdout, f"SIGTERM: clean stop ({job.returncode}):\n{stdout}\n{stderr}")
stopped_at = len(metrics(termed))
train(termed, [f"train.steps={steps}"])
close(straight1, termed, "SIGTERM and resumed", range(1, steps + 1), 0.0)
print(f"ok: SIGTERM stopped a one-process run at step {stopped_at} with a checkpoint; resumed run is bitwise equal")
