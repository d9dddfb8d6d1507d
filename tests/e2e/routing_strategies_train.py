"""Every routing strategy trains from a recipe on the tiny corpus: the loss falls and the routing
measures appear in metrics.jsonl (z_loss, max_vio, dropped_frac, per layer), in TensorBoard (read by
the real tensorboard package) and in expert_load.jsonl."""
import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import check, fresh_dir, metrics, moe_train

base = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
        "train.micro_batch_size=4", "data.seq_len=64", "train.eval_interval=15", "schedule.warmup_steps=5",
        "train.steps=30"]
variants = {
    "switch": [],
    "sequence_aux": ["routing.aux_loss_coeff=0", "routing.seq_aux_loss_coeff=0.01"],
    "global_aux": ["routing.aux_loss_coeff=0", "routing.global_aux_loss_coeff=0.01", "train.grad_accum_steps=2"],
    "z_loss": ["routing.z_loss_coeff=0.001"],
    "bias": ["routing.aux_loss_coeff=0", "routing.bias_update_rate=0.001"],
    "deepseek_v3": ["routing.score_function=SIGMOID", "routing.num_groups=4", "routing.group_topk=2",
                    "routing.aux_loss_coeff=0", "routing.bias_update_rate=0.001", "routing.seq_aux_loss_coeff=0.0001"],
    "mixtral_order": ["routing.topk_order=TOPK_THEN_SOFTMAX"],
    "capacity_drop": ["routing.capacity_factor=1.0", "routing.drop_policy=POSITION"],
    "capacity_drop_probs": ["routing.capacity_factor=1.0", "routing.drop_policy=PROBS", "routing.min_capacity=4"],
    "sigmoid_scaled": ["routing.score_function=SIGMOID", "routing.normalize_gates=false", "routing.gate_scale=2.5"],
    "capacity_pad": ["routing.capacity_factor=1.25", "routing.pad_to_capacity=true", "routing.eval_capacity_factor=2"],
    "top1_jitter": ["model.top_k=1", "routing.jitter_eps=0.01"],
    "expert_choice": ["routing.router_type=EXPERT_CHOICE", "routing.aux_loss_coeff=0"],
    "hash": ["routing.router_type=HASH", "routing.aux_loss_coeff=0"],
    "random": ["routing.router_type=RANDOM", "routing.aux_loss_coeff=0"],
}
for name, overrides in variants.items():
    run = fresh_dir(f"e2e_routing_{name}")
    moe_train(run, base + overrides)
    rows = metrics(run)
    check(len(rows) == 30, f"{name}: 30 steps")
    for key in ("z_loss", "max_vio", "dropped_frac", "router_entropy", "max_vio/layer0", "dropped_frac/layer1"):
        check(key in rows[-1], f"{name}: {key} in metrics.jsonl")
    check("val_max_vio" in rows[-1], f"{name}: val_max_vio at the eval step")
    for row in rows:
        # fp32 totals against per-layer fp32 values summed in fp64: 1e-6 relative.
        check(abs(row["aux_loss"] - row["aux_loss/layer0"] - row["aux_loss/layer1"]) <= 1e-6 * row["aux_loss"],
              f"{name}: aux_loss = sum over layers")
        check(abs(row["z_loss"] - (row["z_loss/layer0"] + row["z_loss/layer1"]) / 2) <= 1e-6 * row["z_loss"],
              f"{name}: z_loss = mean over layers")
    if name == "z_loss":
        check(all(row["z_loss/layer0"] > 0 and row["z_loss/layer1"] > 0 for row in rows), "z-loss logged per layer")
    check(rows[-1]["lm_loss"] < rows[0]["lm_loss"] - 0.5, f"{name}: loss fell ({rows[0]['lm_loss']:.3f} -> {rows[-1]['lm_loss']:.3f})")
    with open(os.path.join(run, "expert_load.jsonl")) as f:
        load = [json.loads(line) for line in f]
    check(len(load) == 30 and sorted(load[0]["tokens_per_expert"]) == ["layer0", "layer1"], f"{name}: expert_load.jsonl")
    acc = EventAccumulator(run, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    missing = [k for k in rows[-1] if k != "step" and k not in tags]
    check(not missing, f"{name}: every measure in TensorBoard, missing {missing}")
    check(all(f"tokens_per_expert/layer{l}/expert{e:03d}" in tags for l in (0, 1) for e in range(8)),
          f"{name}: tokens per expert in TensorBoard")
    with open(os.path.join(run, "expert_domains.jsonl")) as f:
        domains = {json.loads(line)["domain"] for line in f}
    check({"en", "de", "ru", "c", "python"} <= domains, f"{name}: expert load per validation domain")
    dropped = sum(r["dropped_frac"] for r in rows)
    if name in ("capacity_drop", "capacity_drop_probs"):
        check(dropped > 0, "capacity 1.0 drops some pairs")
    elif name not in ("capacity_pad",):
        check(dropped == 0, f"{name}: dropless")
    print(f"{name:14s} lm_loss {rows[0]['lm_loss']:.3f} -> {rows[-1]['lm_loss']:.3f}  max_vio {rows[-1]['max_vio']:.3f}  "
          f"dropped {rows[-1]['dropped_frac']:.4f}")
print("ok")
