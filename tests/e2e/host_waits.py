"""Host blocking points per training step, counted on the host planes (docs/parallelism.md, "Where the host
waits"): metrics.jsonl `host_reads` (device-to-host reads, util::read_to_host) and `comm_host_waits`
(collectives that held the host until the peers' data came). With L MoE layers and m micro-batches:

  one process                        host_reads 2                comm_host_waits -
  EP 2 dropless (MPI and the store)  host_reads 2 + L*m          comm_host_waits 5*L*m + 5
  EP 2 capacity, padded              host_reads 2                comm_host_waits 4*L*m + 5

2 reads per step (the step's MoE measures, then the loss and gradient norm) and, with EP > 1 and rows
not padded, one per MoE layer per micro-batch (the all-to-all count matrix). Collectives per MoE layer per
micro-batch: the count exchange (unless padded) and 4 all-to-alls (dispatch and combine, each with its
backward); per step: the dp and expert_dp gradient sums, the expert gradient norm over ep, the world sums
of the measures and of the loss. On NCCL every collective is enqueued without a host wait: gpu-check
asserts comm_host_waits 0 there."""
import os
import subprocess
import sys

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, metrics, moe_train

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
LAYERS = 2
BASE = [f"model.num_layers={LAYERS}", "model.d_model=64", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
        "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=0", "train.steps=3",
        "checkpoint.interval=0", "train.threads=1"]


def args(run, overrides):
    out = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + BASE + overrides:
        out += ["--set", o]
    return out


def launched(name, launcher, overrides):
    run = fresh_dir(f"host_waits_{name}")
    cmd = (MPIRUN + ["-np", "2"] if launcher == "mpirun" else
           [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python"]) + args(run, overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    check(proc.returncode == 0, f"{name}: {launcher} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return run


def expect(run, name, reads, waits):
    steps = [r for r in metrics(run) if "host_reads" in r]
    check(len(steps) == 3, f"{name}: 3 steps")
    for r in steps:
        check(r["host_reads"] == reads, f"{name} step {r['step']}: {r['host_reads']} host reads, expected {reads}")
        got = r.get("comm_host_waits")
        check(got == waits, f"{name} step {r['step']}: {got} collectives waited on by the host, expected {waits}")
    print(f"{name}: {reads} host reads and {waits} host waits per step")


one = fresh_dir("host_waits_one")
moe_train(one, BASE + ["train.grad_accum_steps=2"])
expect(one, "one process", 2, None)
for m in (1, 2):
    for launcher in ("mpirun", "torchrun"):
        run = launched(f"ep2_m{m}_{launcher}", launcher, ["parallel.expert=2", f"train.grad_accum_steps={m}"])
        expect(run, f"EP 2, m={m}, {launcher}", 2 + LAYERS * m, 5 * LAYERS * m + 5)
run = launched("ep2_padded", "mpirun", ["parallel.expert=2", "train.grad_accum_steps=2",
                                        "routing.capacity_factor=1.25", "routing.pad_to_capacity=true"])
expect(run, "EP 2 padded, m=2, mpirun", 2, 4 * LAYERS * 2 + 5)
print("ok")
