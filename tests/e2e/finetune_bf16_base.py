"""finetune.base_dtype = BF16: LoRA on experts with the frozen base held in bf16 (docs/finetuning.md).

From a short pretraining run of the tiny recipe (vocabulary 512, d_model 128):
1. the LoRA run reports its parameter bytes: about half of what the same run holds with an fp32 base
   (the embedding, norms, router and adapters stay fp32), its loss falls, and every step's loss equals
   the same run's with an fp32 base (train.precision BF16 rounds an fp32 base to the same bf16 at each use);
2. its checkpoints hold the base weights in fp32, equal to the pretrained weights rounded to bf16
   (widened exactly), and the base did not move;
3. resumed from its step-10 checkpoint it continues bit for bit like the run that never stopped;
4. a recipe asking for a bf16 base without LoRA, or without train.precision BF16, is refused naming the fix.
"""
import os
import shutil

import torch

from common import check, fresh_dir, load_checkpoint, metrics, moe_train, SOURCE

LORA = os.path.join(SOURCE, "recipes/finetune/lora_experts.textproto")
FAST = ["train.micro_batch_size=8", "data.seq_len=64", "train.threads=1", "logging.tensorboard=false",
        "train.eval_interval=0", "logging.log_interval=1"]

pre = fresh_dir("e2e_bf16_base_pretrain")
moe_train(pre, FAST + ["train.steps=20", "checkpoint.interval=0"])

run = fresh_dir("e2e_bf16_base_lora")
lora = FAST + [f"finetune.init_from={pre}", "finetune.base_dtype=BF16", "train.precision=BF16", "train.steps=20",
               "schedule.warmup_steps=2", "optimizer.lr=1e-2", "checkpoint.interval=10", "checkpoint.keep_last=5"]
proc = moe_train(run, lora, recipe=LORA)

# 1. Parameter memory about half; the loss falls.
line = next((l for l in proc.stdout.splitlines() if l.startswith("finetune.base_dtype BF16:")), None)
check(line is not None, f"the run reports its bf16 base:\n{proc.stdout}")
held, total = int(line.split("parameter bytes on this rank ")[1].split()[0]), int(line.split("(")[1].split()[0])
ratio = held / total
print(line)
check(0.45 < ratio < 0.6, f"parameter bytes {held} of {total} with an fp32 base ({ratio:.3f}): about half")
losses = [m["loss"] for m in metrics(run)]
first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
check(len(losses) == 20 and last < first - 0.04, f"loss falls with a bf16 base: {first:.4f} -> {last:.4f}")
print(f"loss {first:.4f} -> {last:.4f} over 20 LoRA steps")
# Under train.precision BF16 an fp32 base is rounded to the same bf16 at every use: the same run with an
# fp32 base trains bit for bit alike.
fp32_base = fresh_dir("e2e_bf16_base_lora_fp32_base")
moe_train(fp32_base, [o for o in lora if not o.startswith("finetune.base_dtype")], recipe=LORA)
reference = [m["loss"] for m in metrics(fp32_base)]
check(reference == losses, f"bf16 base and fp32 base differ: {list(zip(reference, losses))[:5]}")
print("20 steps bitwise equal to the same run with an fp32 base")

# 2. Checkpoints: fp32 files, base = pretrained weights rounded to bf16.
before = load_checkpoint(os.path.join(pre, "checkpoints", "step_00000020"))
after = load_checkpoint(os.path.join(run, "checkpoints", "step_00000020"))
rounded = 0
for name, t in after.items():
    if not name.startswith("model/"):
        continue
    check(t.dtype == torch.float32, f"{name} saved as {t.dtype}")
    base = before.get(name)
    if base is None or "_lora_" in name:
        continue
    is_matrix_in_bf16 = t.dim() >= 2 and name not in ("model/embed.weight",) and ".router." not in name
    expected = base.to(torch.bfloat16).to(torch.float32) if is_matrix_in_bf16 else base
    check(torch.equal(t, expected), f"{name}: the base moved or was not rounded to bf16 exactly once")
    rounded += is_matrix_in_bf16 and not torch.equal(t, base)
check(rounded > 0, "some base weights were rounded (the bf16 base is real)")
print(f"checkpoint: fp32 tensors, {rounded} base matrices equal to the pretrained ones rounded to bf16")

# 3. Resume from step 10: the same steps 11-20 to the last bit.
resumed = fresh_dir("e2e_bf16_base_resumed")
shutil.copytree(run, resumed)
shutil.rmtree(os.path.join(resumed, "checkpoints", "step_00000020"))
with open(os.path.join(resumed, "checkpoints", "latest"), "w") as f:
    f.write("step_00000010\n")
proc = moe_train(resumed, lora, recipe=LORA)
check("resumed from" in proc.stdout, "the copy resumes from step 10")
a, b = metrics(run), metrics(resumed)
check([m["step"] for m in b] == list(range(1, 21)), f"steps {[m['step'] for m in b]}")
for ma, mb in zip(a[10:], b[10:]):
    for key in ("loss", "grad_norm"):
        check(ma[key] == mb[key], f"step {ma['step']} {key}: {ma[key]!r} != {mb[key]!r} after resume")
print("resume: steps 11-20 identical to the last bit")

# 4. Refused recipes.
for extra, expected in ((["finetune.lora.rank=0"], "needs finetune.lora.rank > 0"),
                        (["train.precision=FP32"], "needs train.precision = BF16")):
    bad = fresh_dir("e2e_bf16_base_refused")
    proc = moe_train(bad, lora + extra, recipe=LORA, check=False)
    check(proc.returncode != 0 and "finetune.base_dtype = BF16" in proc.stderr and expected in proc.stderr,
          f"refused with the fix: {proc.stderr}")
    check(not os.path.exists(bad), "a refused recipe leaves no run directory")
print("PASS")
