"""Mixed precision (train.precision=BF16) on the tiny recipe, one process, same seed and data as fp32: bf16
training tracks fp32. Two checks that hold on every CPU kind, whatever kernels its bf16 GEMMs run on:

- the first BF16_FIRST_STEPS steps one by one, before the two trajectories can part: per-step loss within
  BF16_FIRST_STEPS_REL of fp32;
- where the run ends: final validation loss (50 steps) within BF16_VAL_REL of fp32.

Later steps are not compared one by one: from step ~10 on, the training loss of one step moves by a few
percent with the batch, and a bf16 run on other kernels (another blocking and accumulation order: AVX2,
AVX-512, AVX-512 BF16 and AMX all differ) follows another path through that noise; the old 3% per-step bound
over all 50 steps, measured on one AVX2 CPU, failed on an Intel CPU with AMX at 3.85% (step noise, not a
bf16 fault) while its final validation loss was within 0.26%.

Margins (tests/e2e/measure_margins.py --only bf16, seeds 1234, 1, 2, 3, 4, each under ONEDNN_MAX_CPU_ISA=
AVX2, AVX512_CORE and the CPU's best, AVX512_CORE_BF16, on an AMD EPYC with AVX-512 BF16, no AMX; table in
docs/benchmarks.md): first 10 steps worst 6.6e-4 against 0.5% (7.6x); final validation loss worst 1.68%
against 3% (1.8x; 0.96% at this test's seed, 0.26% on the Intel CPU with AMX). Written beside the
thresholds in empirical.py.

A bf16 run stopped with a checkpoint and resumed is bitwise equal to one that never stopped, and its
checkpoint holds fp32 weights (master weights: precision never reaches what is saved)."""
import glob
import json
import os

from safetensors import safe_open

from common import check, fresh_dir, metrics, moe_train
from empirical import BF16_FIRST_STEPS, BF16_FIRST_STEPS_REL, BF16_RUN, BF16_VAL_REL, bf16_against_fp32

fp32 = fresh_dir("e2e_bf16_fp32")
moe_train(fp32, BF16_RUN)
bf16 = fresh_dir("e2e_bf16_bf16")
moe_train(bf16, BF16_RUN + ["train.precision=BF16"])
a, b = metrics(fp32), metrics(bf16)
check(len(a) == len(b) == 50, "50 steps each")
m = bf16_against_fp32(a, b)
print(f"bf16 vs fp32 (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}): worst loss difference "
      f"{m['first_steps']:.2e} relative over the first {BF16_FIRST_STEPS} steps ({m['worst_step']:.2e} over all 50, not "
      f"checked), final validation loss {a[-1]['val_loss']:.4f} vs {b[-1]['val_loss']:.4f} ({m['val']:.2e} relative)")
check(m["first_steps"] < BF16_FIRST_STEPS_REL,
      f"loss of each of the first {BF16_FIRST_STEPS} steps within {BF16_FIRST_STEPS_REL:.1%} (worst {m['first_steps']:.3%})")
check(m["val"] < BF16_VAL_REL, f"final validation loss within {BF16_VAL_REL:.1%} ({m['val']:.3%})")
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
print(json.dumps({"bf16_first_steps_rel": m["first_steps"], "bf16_worst_step_rel": m["worst_step"], "bf16_val_rel": m["val"]}))
print("ok")
