"""moe-bench runs: `moe-layer` and `finetune` at tiny sizes each print one JSON line per measurement with
a positive, finite tokens/s (and the sizes they were asked for); `collectives` in one process prints its
latencies with the polled and the blocking MPI wait, and a bad MOETRAIN_MPI_WAIT is refused by name.
Seconds on one thread."""
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
# --breakdown: the layer's line, then where its time goes, phase by phase (fp32 and bf16).
for precision in ("fp32", "bf16"):
    proc = subprocess.run([os.path.join(BIN, "moe-bench"), "moe-layer", *SIZES, "--breakdown", "--precision", precision],
                          capture_output=True, text=True, timeout=120)
    check(proc.returncode == 0, f"moe-layer --breakdown --precision {precision} exited {proc.returncode}:\n{proc.stderr}")
    layer, parts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    phases = ("router_ms", "dispatch_ms", "operands_ms", "expert_gemms_ms", "combine_ms")
    check(parts["bench"] == "moe-layer-breakdown" and all(parts[p] >= 0 and math.isfinite(parts[p]) for p in phases),
          f"breakdown: every phase a time: {parts}")
    check(abs(sum(parts[p] for p in phases) - parts["phases_ms"]) < 1e-2 and parts["layer_ms"] > 0,
          f"breakdown: phases_ms is their sum: {parts}")
    print("breakdown", {p: round(parts[p], 3) for p in phases + ("layer_ms",)})
# Rank 4: torch's grouped matmul needs 16-byte strides, so fp32 sizes are multiples of 4.
records = bench("finetune", ["--lora-rank", "4"])
check([r["mode"] for r in records] == ["full", "lora"], f"finetune: expected a full and a LoRA line: {records}")
check(records[1]["trainable"] < records[0]["trainable"], f"finetune: LoRA should train fewer weights: {records}")

for wait in ("poll", "block"):
    proc = subprocess.run([os.path.join(BIN, "moe-bench"), "collectives", "--bytes", "4096", "--iters", "3", "--warmup", "1"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "MOETRAIN_MPI_WAIT": wait})
    check(proc.returncode == 0, f"collectives ({wait}) exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    r = json.loads(proc.stdout)
    check(r["wait"] == wait and r["ranks"] == 1 and r["bytes"] == 4096 and r["all_reduce_us_median"] >= 0 and
          r["all_to_all_us_median"] >= 0, f"collectives ({wait}): {r}")
    print("collectives", wait, r["all_reduce_us_median"], r["all_to_all_us_median"], "us")
proc = subprocess.run([os.path.join(BIN, "moe-bench"), "collectives", "--iters", "1"], capture_output=True, text=True,
                      timeout=120, env={**os.environ, "MOETRAIN_MPI_WAIT": "spin"})
check(proc.returncode == 1 and "MOETRAIN_MPI_WAIT=spin: expected poll" in proc.stderr, f"a bad MOETRAIN_MPI_WAIT: {proc.stderr}")
print("ok")
