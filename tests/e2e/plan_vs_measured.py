"""moe-plan's memory model against memory measured by moe-train (docs/planning.md): for recipes and layouts
on the CPU (one process and mpirun), the plan's tensor memory held between steps and its peak must be
within 15% of rank 0's mem_peak_mib (the largest over the steps after the first), and the memory held
between steps within 15% (or 1.5 MiB: the data moe-train keeps, which the plan leaves out) of
mem_allocated_mib.
Covers fp32 and bf16, sequence lengths 128 to 512, gradient accumulation, EP 2, TP 2, EP 2 x DP 2,
expert tensor parallelism (ETP 2 x EP 2) and EP above DP (TP 2 x EP 4), the distributed optimizer and every
recomputation setting moe-plan proposes."""
import json
import os
import subprocess
import sys

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, metrics

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
BASE = ["train.steps=3", "train.eval_interval=0", "checkpoint.interval=0", "train.threads=1"]
TOLERANCE = 0.15  # the bound issue 23 sets; measured worst 5.1% (TP 2), so a 3x margin
DATA_MIB = 1.5
CASES = [  # (label, ranks, overrides, moe-plan's name of the recomputation)
    ("seq 256", 1, ["data.seq_len=256"], "none"),
    ("seq 512, accumulation 2", 1, ["data.seq_len=512", "train.micro_batch_size=8", "train.grad_accum_steps=2"], "none"),
    ("seq 256 bf16", 1, ["data.seq_len=256", "train.precision=BF16"], "none"),
    ("seq 256, a shared expert", 1, ["data.seq_len=256", "model.num_shared_experts=1"], "none"),
    ("seq 256 full", 1, ["data.seq_len=256", "train.recompute=FULL"], "full"),
    ("seq 256 moe", 1, ["data.seq_len=256", "train.recompute=SELECTIVE", 'train.recompute_modules=["moe"]'],
     "selective[moe]"),
    ("seq 256 moe_act+layernorm", 1, ["data.seq_len=256", "train.recompute=SELECTIVE",
                                      'train.recompute_modules=["moe_act", "layernorm"]'],
     "selective[moe_act,layernorm]"),
    ("EP 2, seq 128", 2, ["data.seq_len=128", "parallel.expert=2"], "none"),
    ("TP 2, seq 128", 2, ["data.seq_len=128", "parallel.tensor=2"], "none"),
    ("EP 2 x DP 2 distributed, seq 128", 4, ["data.seq_len=128", "parallel.expert=2",
                                             "optimizer.distributed=true"], "none"),
    ("DP 2 distributed bf16, seq 128", 2, ["data.seq_len=128", "optimizer.distributed=true",
                                           "train.precision=BF16"], "none"),
    ("EP 2 x DP 2 distributed, bf16 parameters, seq 128", 4,
     ["data.seq_len=128", "parallel.expert=2", "optimizer.distributed=true", "train.precision=BF16",
      "optimizer.param_dtype=BF16", "train.grad_accum_steps=2"], "none"),
    ("ETP 2 x EP 2, seq 128", 4, ["data.seq_len=128", "parallel.expert=2", "parallel.expert_tensor=2"], "none"),
    ("TP 2 x EP 4 (EP above DP), seq 128", 4, ["data.seq_len=128", "parallel.tensor=2", "parallel.expert=4"], "none"),
    ("EP 2 LoRA, bf16 base, frozen router, seq 256", 2,
     ["data.seq_len=256", "parallel.expert=2", "train.precision=BF16", "finetune.lora.rank=8",
      "finetune.freeze_router=true", "finetune.base_dtype=BF16"], "none"),
]


def measured(label, ranks, overrides):
    run = fresh_dir("plan_" + "".join(ch if ch.isalnum() else "_" for ch in label))
    cmd = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + BASE + overrides:
        cmd += ["--set", o]
    if ranks > 1:
        cmd = MPIRUN + ["-np", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    check(proc.returncode == 0, f"{label}: moe-train failed:\n{proc.stdout}\n{proc.stderr}")
    steps = [r for r in metrics(run) if "mem_peak_mib" in r][1:]
    return max(r["mem_allocated_mib"] for r in steps), max(r["mem_peak_mib"] for r in steps)


def planned(ranks, overrides, recompute):
    out = fresh_dir("plan_json") + ".json"
    cmd = [os.path.join(BIN, "moe-plan"), "--recipe", TINY, "--gpus", str(ranks), "--gpu-mem", "80GiB",
           "--json", out]
    for o in SMALL_DATA + BASE + overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    check(proc.returncode == 0, f"moe-plan failed:\n{proc.stdout}\n{proc.stderr}")
    want = {"tp": 1, "ep": 1, "expert_tensor": 1, "distributed_optimizer": False, "bf16_params": False}
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "parallel.tensor":
            want["tp"] = int(value)
        elif key == "parallel.expert":
            want["ep"] = int(value)
        elif key == "parallel.expert_tensor":
            want["expert_tensor"] = int(value)
        elif key == "optimizer.distributed":
            want["distributed_optimizer"] = value == "true"
        elif key == "optimizer.param_dtype":
            want["bf16_params"] = value == "BF16"
    with open(out) as f:
        rows = [r for r in json.load(f) if all(r[k] == v for k, v in want.items()) and r["recompute"] == recompute]
    check(len(rows) == 1, f"moe-plan lists {len(rows)} rows for {want} {recompute}")
    m = rows[0]["memory_bytes"]
    return m["held"] / 2**20, m["peak"] / 2**20


worst = 0.0
failures = []
for label, ranks, overrides, recompute in CASES:
    held, peak = measured(label, ranks, overrides)
    plan_held, plan_peak = planned(ranks, overrides, recompute)
    errors = (plan_held / held - 1, plan_peak / peak - 1)
    worst = max(worst, abs(errors[1]))
    print(f"{label}: held {held:.1f} MiB, planned {plan_held:.1f} ({errors[0]:+.1%}); "
          f"peak {peak:.1f} MiB, planned {plan_peak:.1f} ({errors[1]:+.1%})", flush=True)
    # Held between steps: the plan leaves out the token data and evaluation windows moe-train keeps (about
    # 1 MiB here, whatever the model), so a small model's held memory may differ by that much.
    held_ok = abs(errors[0]) <= TOLERANCE or abs(plan_held - held) <= DATA_MIB
    if not held_ok or abs(errors[1]) > TOLERANCE:
        failures.append(label)
check(not failures, f"outside {TOLERANCE:.0%}: {failures}")

# Bad command lines: one error naming the flag, the value and the fix, exit 2.
for flags, needle in ((["--gpus", "4", "--gpu-mem", "80XB"], "--gpu-mem 80XB: expected a size"),
                      (["--gpus", "4", "--gpu-mem", "80GiB", "--imbalance", "1.2x"], "--imbalance 1.2x: expected a factor"),
                      (["--gpus", "4", "--gpu-mem", "80GiB", "--imbalance", "0.5"], "--imbalance 0.5: expected a factor"),
                      (["--gpus", "6", "--gpu-mem", "80GiB", "--nodes", "4"], "--nodes 4: does not divide --gpus 6")):
    cmd = [os.path.join(BIN, "moe-plan"), "--recipe", TINY] + flags
    for o in SMALL_DATA:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    check(proc.returncode == 2 and needle in proc.stderr, f"{flags}: expected exit 2 naming {needle!r}:\n{proc.stderr}")
print(f"ok: worst peak error {worst:.1%}")
