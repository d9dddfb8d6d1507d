"""A run stopped (exit_interval, with a checkpoint) and resumed gives bitwise the same per-step
losses and gradient norms as one that never stopped (CPU, same layout). Bias balancing is on, so the
expert biases must be restored too; router jitter is keyed by the restored sampler position."""
from common import check, fresh_dir, metrics, moe_train

common = ["train.steps=12", "train.eval_interval=6", "train.grad_accum_steps=2", "schedule.warmup_steps=4",
          "train.threads=1", "routing.bias_update_rate=0.01", "routing.global_aux_loss_coeff=0.01",
          "routing.z_loss_coeff=0.001", "routing.jitter_eps=0.01"]
straight = fresh_dir("e2e_resume_straight")
moe_train(straight, common)
stopped = fresh_dir("e2e_resume_stopped")
first = moe_train(stopped, common + ["train.exit_interval=5"])
check("exit_interval reached at step 5" in first.stdout, "first invocation stops at step 5")
check(len(metrics(stopped)) == 5, "5 steps before the stop")
second = moe_train(stopped, common)
check("resumed from" in second.stdout, "second invocation resumes from the checkpoint")

a, b = metrics(straight), metrics(stopped)
check([r["step"] for r in b] == list(range(1, 13)), f"steps after resume: {[r['step'] for r in b]}")
for ra, rb in zip(a, b):
    for key in ("loss", "lm_loss", "aux_loss", "z_loss", "max_vio", "grad_norm", "lr", "val_loss", "val_max_vio"):
        check(ra.get(key) == rb.get(key), f"step {ra['step']} {key}: {ra.get(key)!r} != {rb.get(key)!r}")
print("ok: 12 steps identical to the last bit")
