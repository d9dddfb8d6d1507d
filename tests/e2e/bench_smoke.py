"""moe-bench runs: `moe-layer` and `finetune` at tiny sizes each print one JSON line per measurement with
a positive, finite tokens/s (and the sizes they were asked for). Seconds on one thread."""
import json
import math
import os
import subprocess

from common import BIN, check

# The smallest sizes that still route (2 experts, top-1) and meet grouped matmul's 16-byte strides.
SIZES = ["--tokens", "32", "--d-model", "16", "--experts", "2", "--top-k", "1", "--hidden", "16",
         "--warmup", "1", "--iters", "2", "--threads", "1"]


def bench(name, extra=()):
    cmd = [os.path.join(BIN, "moe-bench"), name, *SIZES, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    check(proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    for r in lines:
        check(r["bench"] == name, f"{name}: unexpected record {r}")
        check(isinstance(r["tokens_per_s"], (int, float)) and math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0,
              f"{name}: tokens_per_s is not a positive number: {r}")
        check((r["tokens"], r["d_model"], r["experts"], r["top_k"], r["hidden"], r["threads"], r["iters"]) ==
              (32, 16, 2, 1, 16, 1, 2), f"{name}: sizes not as requested: {r}")
    print(name, [round(r["tokens_per_s"]) for r in lines], "tokens/s")
    return lines


check(len(bench("moe-layer")) == 1, "moe-layer: expected one JSON line")
# Rank 4: torch's grouped matmul needs 16-byte strides, so fp32 sizes are multiples of 4.
records = bench("finetune", ["--lora-rank", "4"])
check([r["mode"] for r in records] == ["full", "lora"], f"finetune: expected a full and a LoRA line: {records}")
check(records[1]["trainable"] < records[0]["trainable"], f"finetune: LoRA should train fewer weights: {records}")
print("ok")
