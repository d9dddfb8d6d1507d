"""Mixed precision (train.precision=BF16) on the tiny recipe, one process, same seed and data as fp32:
per-step loss within 3% of the fp32 run for 50 steps and final validation loss within 1% (issue
thresholds; measured once, seed 1234: 2.0% and 0.25%, stated in README.md). On a CPU without native bf16
matmul (the AVX2 dev machine) the bf16 run is several times slower than fp32, hence the longer timeout. A bf16 run
stopped with a checkpoint and resumed is bitwise equal to one that never stopped, and its checkpoint
holds fp32 weights (master weights: precision never reaches what is saved)."""
import glob
import json
import os

from safetensors import safe_open

from common import check, fresh_dir, metrics, moe_train

run = ["train.steps=50", "train.eval_interval=50", "schedule.warmup_steps=10", "checkpoint.interval=0"]
fp32 = fresh_dir("e2e_bf16_fp32")
moe_train(fp32, run)
bf16 = fresh_dir("e2e_bf16_bf16")
moe_train(bf16, run + ["train.precision=BF16"])
a, b = metrics(fp32), metrics(bf16)
check(len(a) == len(b) == 50, "50 steps each")
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
val = abs(a[-1]["val_loss"] - b[-1]["val_loss"]) / a[-1]["val_loss"]
print(f"bf16 vs fp32: worst per-step loss difference {worst:.2e} relative, final validation loss "
      f"{a[-1]['val_loss']:.4f} vs {b[-1]['val_loss']:.4f} ({val:.2e} relative)")
check(worst < 0.03, f"per-step loss within 3% (worst {worst:.3%})")
check(val < 0.01, f"final validation loss within 1% ({val:.3%})")
check(any(x["loss"] != y["loss"] for x, y in zip(a, b)), "the bf16 run computes in bf16 (its losses differ from fp32)")
with open(os.path.join(bf16, "recipe.textproto")) as f:
    check("precision: BF16" in f.read(), "the resolved recipe records the precision")

shard = glob.glob(os.path.join(bf16, "checkpoints", "step_00000050", "*.safetensors"))[0]
with safe_open(shard, framework="pt") as f:
    dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
check(dtypes <= {"torch.float32", "torch.int64", "torch.uint8"}, f"checkpoint of a bf16 run holds fp32 weights: {dtypes}")

resume = ["train.steps=8", "train.eval_interval=4", "train.micro_batch_size=8", "schedule.warmup_steps=4",
          "train.threads=1", "routing.bias_update_rate=0.01", "routing.jitter_eps=0.01", "train.precision=BF16"]
straight = fresh_dir("e2e_bf16_resume_straight")
moe_train(straight, resume)
stopped = fresh_dir("e2e_bf16_resume_stopped")
moe_train(stopped, resume + ["train.exit_interval=3"])
second = moe_train(stopped, resume)
check("resumed from" in second.stdout, "second invocation resumes")
for ra, rb in zip(metrics(straight), metrics(stopped)):
    for key in ("loss", "grad_norm", "max_vio", "val_loss"):
        check(ra.get(key) == rb.get(key), f"bf16 resume, step {ra['step']} {key}: {ra.get(key)!r} != {rb.get(key)!r}")
print(json.dumps({"bf16_worst_step_rel": worst, "bf16_val_rel": val}))
print("ok")
