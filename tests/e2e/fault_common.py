"""Helpers of the reliability tests (docs/reliability.md): launch moe-train under mpirun or torchrun with a
mark in its environment, find its ranks' processes, check a run directory's latest checkpoint."""
import os
import signal
import subprocess
import sys
import time
import uuid

from common import BIN, SMALL_DATA, TINY, check

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
# The tiny recipe shrunk to a few milliseconds per step on the small test corpus.
SMALL = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_sequences=4", "schedule.warmup_steps=3",
         "train.threads=1", "routing.bias_update_rate=0.01"]


def train_args(run, overrides):
    args = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + SMALL + overrides:
        args += ["--set", o]
    return args


def launch_cmd(launcher, np, run, overrides, env_names=(), max_restarts=0):
    """The command line of a run of `np` ranks; `env_names` are passed on to the ranks (mpirun -x)."""
    if launcher == "mpirun":
        return MPIRUN + [x for name in env_names for x in ("-x", name)] + ["-np", str(np)] + train_args(run, overrides)
    if launcher == "torchrun":
        return [TORCHRUN, "--standalone", "--nproc-per-node", str(np), "--max-restarts", str(max_restarts),
                "--no-python"] + train_args(run, overrides)
    return train_args(run, overrides)


def rank_processes(mark):
    """{rank: pid} of the moe-train processes whose environment holds MOETRAIN_TEST_MARK=mark."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "moe-train":
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"MOETRAIN_TEST_MARK") == mark.encode():
            rank = env.get(b"OMPI_COMM_WORLD_RANK") or env.get(b"RANK")
            found[int(rank)] = int(pid)
    return found


def new_mark():
    return uuid.uuid4().hex


def wait_for_step(run, step, job, limit_s=180):
    """Waits until metrics.jsonl of `run` holds `step` (or the job ended); returns the steps logged."""
    path = os.path.join(run, "metrics.jsonl")
    deadline = time.time() + limit_s
    while time.time() < deadline and job.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().count("\n")
            if lines >= step:
                return lines
        time.sleep(0.05)
    check(False, f"{run}: step {step} not reached (job exit code {job.poll()})")


def end_leftovers(mark):
    """SIGKILLs ranks still alive after their job ended (a test failure: the launcher left them)."""
    left = rank_processes(mark)
    for pid in left.values():
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    return left


def latest_step(run):
    with open(os.path.join(run, "checkpoints", "latest")) as f:
        return f.read().strip()


def verify_latest(run):
    """moe-ckpt verify on checkpoints/latest; returns its step directory name."""
    name = latest_step(run)
    proc = subprocess.run([os.path.join(BIN, "moe-ckpt"), "verify", "--checkpoint", os.path.join(run, "checkpoints", name)],
                          capture_output=True, text=True, timeout=120)
    check(proc.returncode == 0, f"moe-ckpt verify {name} failed:\n{proc.stdout}\n{proc.stderr}")
    return name
