"""train.device and train.deterministic on a machine without a GPU: AUTO trains on the CPU, CPU is the same
run, deterministic mode changes no bit on the CPU (its kernels are deterministic already) and makes no op
refuse to run; the resolved recipe records the settings. (On a GPU, launch/gpu-check.sh compares GPU
with CPU.)"""
import os

from common import check, fresh_dir, metrics, moe_train

STEPS = ["train.steps=6", "train.eval_interval=0", "checkpoint.save_final=false"]
runs = {}
for name, overrides in [("auto", []), ("cpu_deterministic", ["train.device=CPU", "train.deterministic=true"])]:
    run = fresh_dir("e2e_device_" + name)
    proc = moe_train(run, STEPS + overrides)
    check("device:" not in proc.stdout, f"{name}: a CPU run names no device line:\n{proc.stdout}")
    runs[name] = run

a, b = metrics(runs["auto"]), metrics(runs["cpu_deterministic"])
check(len(a) == len(b) == 6, f"6 steps each: {len(a)} and {len(b)}")
for x, y in zip(a, b):
    for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
        check(x[key] == y[key], f"step {x['step']} {key}: AUTO {x[key]!r} != CPU deterministic {y[key]!r}")
with open(os.path.join(runs["cpu_deterministic"], "recipe.textproto")) as f:
    resolved = f.read()
check("device: CPU" in resolved and "deterministic: true" in resolved, "the resolved recipe records device and determinism")
print("ok: AUTO = CPU deterministic bitwise over 6 steps; losses", [round(m["loss"], 4) for m in a])
