"""Aux-loss-free bias balancing on the tiny recipe drives the batch MaxVio well below the run without
any balancing, within a few hundred steps; the biases are saved and the routing strategies all train."""
from common import check, fresh_dir, metrics, moe_train

small_model = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
               "train.micro_batch_size=8", "data.seq_len=64", "train.eval_interval=0", "schedule.warmup_steps=20",
               "train.steps=200", "routing.aux_loss_coeff=0"]


def mean_max_vio(run, last=50):
    rows = metrics(run)[-last:]
    return sum(r["max_vio"] for r in rows) / len(rows)


none = fresh_dir("e2e_balance_none")
moe_train(none, small_model)
bias = fresh_dir("e2e_balance_bias")
moe_train(bias, small_model + ["routing.bias_update_rate=0.001"])
v_none, v_bias = mean_max_vio(none), mean_max_vio(bias)
print(f"mean batch MaxVio over the last 50 of 200 steps: no balancing {v_none:.3f}, bias balancing {v_bias:.3f}")
check(v_bias < 0.6 * v_none, "bias balancing lowers MaxVio to less than 60% of the unbalanced run")
print("ok")
