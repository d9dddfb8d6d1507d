"""Activation recomputation (train.recompute, docs/training.md "Recomputation") changes no number: every
step's metrics (losses, gradient norm, routing measures, validation) are bitwise those without it,
in one process, under EP 2 and under TP 2 (mpirun), with gradient accumulation, router jitter, the
global-batch and sequence losses and z-loss (the replayed state). FULL recomputation lowers the step's peak
tensor memory (mem_peak_mib); under EP a replayed MoE layer moves its all-to-all bytes again. Bad settings
are refused naming the field."""
import os
import subprocess

from common import BIN, SMALL_DATA, TINY, check, fresh_dir, metrics, moe_train, without_timings

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
BASE = ["model.num_layers=3", "model.d_model=64", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
        "model.moe_layer_freq=0", "model.moe_layers=[1, 2]", "model.num_shared_experts=1",
        "routing.jitter_eps=0.1", "routing.global_aux_loss_coeff=0.01", "routing.seq_aux_loss_coeff=0.01",
        "routing.z_loss_coeff=0.001", "train.micro_batch_size=4", "train.grad_accum_steps=2", "data.seq_len=32",
        "train.eval_interval=0", "train.steps=3", "checkpoint.interval=0", "train.threads=1"]
SETTINGS = {
    "none": [],
    "full": ["train.recompute=FULL"],
    "full_1": ["train.recompute=FULL", "train.recompute_num_layers=1"],
    "selective": ["train.recompute=SELECTIVE",
                  'train.recompute_modules=["core_attn", "moe_act", "layernorm", "mlp", "moe"]'],
}
LAYOUTS = {"one": None, "ep2": ["parallel.expert=2"], "tp2": ["parallel.tensor=2"]}


def numbers(record):
    """What recomputation must not change: every metric but the clock, memory, and the communication and
    host reads that a replayed MoE layer repeats (its dispatch and combine all-to-alls)."""
    return {k: v for k, v in without_timings(record).items()
            if k not in ("comm_bytes", "comm_host_waits", "host_reads")}


def train(name, layout, overrides):
    run = fresh_dir(f"recompute_{name}")
    if layout is None:
        moe_train(run, BASE + overrides, env={"OMP_NUM_THREADS": "1"})
        return run
    cmd = MPIRUN + ["-np", "2", os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
    for o in SMALL_DATA + BASE + layout + overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    check(proc.returncode == 0, f"{name}: mpirun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return run


for layout, extra in LAYOUTS.items():
    runs = {s: [r for r in metrics(train(f"{layout}_{s}", extra, o)) if "grad_norm" in r] for s, o in SETTINGS.items()}
    reference = [numbers(r) for r in runs["none"]]
    check(len(reference) == 3, f"{layout}: 3 steps")
    for setting, records in runs.items():
        check([numbers(r) for r in records] == reference,
              f"{layout} {setting}: metrics differ from no recomputation:\n{records}\n{reference}")
    extra = {s: records[-1].get("comm_bytes", 0) - runs["none"][-1].get("comm_bytes", 0) for s, records in runs.items()}
    if layout == "ep2":  # the replayed MoE layers dispatch and combine again
        check(extra["full"] > 0 and extra["selective"] > 0, f"{layout}: replays move bytes: {extra}")
    peak = {s: max(r["mem_peak_mib"] for r in records) for s, records in runs.items()}
    check(peak["full"] < peak["none"], f"{layout}: FULL peak {peak['full']:.2f} MiB not below NONE {peak['none']:.2f}")
    print(f"{layout}: bitwise equal; peak MiB " + ", ".join(f"{s} {v:.2f}" for s, v in peak.items())
          + "; extra bytes on the last step " + ", ".join(f"{s} {v}" for s, v in extra.items()))

for overrides, needle in ((["train.recompute=SELECTIVE"], "train.recompute = SELECTIVE"),
                          (["train.recompute=SELECTIVE", 'train.recompute_modules=["attn"]'],
                           'train.recompute_modules = "attn"'),
                          (["train.recompute=FULL", "train.recompute_num_layers=9"], "train.recompute_num_layers = 9")):
    proc = moe_train(fresh_dir("recompute_bad"), BASE + overrides, check=False)
    check(proc.returncode != 0 and needle in proc.stderr, f"{overrides}: expected a refusal naming {needle!r}:\n"
          f"{proc.stderr}")
print("ok")
