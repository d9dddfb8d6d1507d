"""Failures in a multi-process run end the job, never hang it:
1. bad parallel sizes: every rank prints the same message and exits non-zero before any collective;
2. a rank killed with SIGKILL mid-training: the other ranks exit non-zero within a bounded time."""
import os
import signal
import subprocess
import time
import uuid

from common import BIN, SMALL_DATA, TINY, check, fresh_dir
from fault_common import rank_processes

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
small = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=0", "checkpoint.interval=0",
         "checkpoint.save_final=false"]


def command(run, np, overrides, extra_env=()):
    cmd = MPIRUN + [x for name in extra_env for x in ("-x", name)] + ["-np", str(np), os.path.join(BIN, "moe-train"),
                                                                      "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + small + overrides:
        cmd += ["--set", o]
    return cmd


# 1. Bad sizes: 4 experts cannot be split over 3 expert-parallel ranks.
run = fresh_dir("failure_sizes")
proc = subprocess.run(command(run, 3, ["model.num_experts=4", "parallel.expert=3"]), capture_output=True, text=True,
                      timeout=120)
check(proc.returncode != 0, "bad sizes exit non-zero")
message = "parallel.expert = 3: model.num_experts (4) must be divisible by the expert-parallel size"
for rank in range(3):
    check(f"moe-train: error (rank {rank}): " in proc.stderr, f"rank {rank} reports an error:\n{proc.stderr}")
check(proc.stderr.count(message) == 3, f"the same message from all 3 ranks:\n{proc.stderr}")
print("bad sizes: every rank reports", repr(message))

# 1b. A vocabulary that the tensor-parallel ranks cannot split by rows (vocab-parallel embedding).
run = fresh_dir("failure_vocab")
proc = subprocess.run(command(run, 2, ["model.vocab_size=513", "parallel.tensor=2"]), capture_output=True, text=True,
                      timeout=120)
message = ("parallel.tensor = 2: model.vocab_size (513) must be divisible by it (the embedding and LM head are split "
           "by vocabulary rows); pad the vocabulary to a multiple of the tensor-parallel size")
check(proc.returncode != 0 and proc.stderr.count(message) == 2, f"the same vocab message from both ranks:\n{proc.stderr}")
print("bad vocabulary for TP: every rank reports", repr(message))

# 2. SIGKILL of rank 1 mid-training.
run = fresh_dir("failure_kill")
mark = uuid.uuid4().hex
env = {**os.environ, "MOETRAIN_TEST_MARK": mark}
job = subprocess.Popen(command(run, 2, ["train.steps=100000", "parallel.expert=2"], ["MOETRAIN_TEST_MARK"]),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


deadline = time.time() + 120
while time.time() < deadline and not os.path.exists(os.path.join(run, "metrics.jsonl")):
    time.sleep(0.2)
check(os.path.exists(os.path.join(run, "metrics.jsonl")), "training started")
victims = rank_processes(mark)
check(1 in victims, f"found rank 1 ({victims})")
os.kill(victims[1], signal.SIGKILL)
killed_at = time.time()
try:
    job.wait(timeout=60)
except subprocess.TimeoutExpired:
    job.kill()
    check(False, "the job did not end within 60 s of a rank's death")
check(job.returncode != 0, f"job exit code {job.returncode} after a rank died")
print(f"rank 1 killed: the job ended with exit code {job.returncode} after {time.time() - killed_at:.1f} s")
print("ok")
