"""Fine-tuning under real MPI ranks (CPU), from a moetrain run and from an imported Hugging Face model:

1. Frozen router (recipes/finetune/frozen_router.textproto, EP=2 on 2 ranks): router weights and expert
   biases end bitwise equal to the pretrained ones, the report says so, the optimizer holds no state for
   them, and the other weights train.
2. LoRA on experts (recipes/finetune/lora_experts.textproto, EP=2 on 2 ranks): every base weight ends
   bitwise equal to the pretrained one, adapters train, only adapters have optimizer state; the per-step
   losses match one process (2 micro-batches per step) within 1e-5 relative.
3. Both recipes run from a random MixtralForCausalLM imported with moe-import, under mpirun.
"""
import json
import os
import subprocess
import warnings

import torch

from common import BIN, SMALL_DATA, SOURCE, TINY, check, fresh_dir, load_checkpoint, metrics

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
SMALL = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_sequences=4", "train.threads=1",
         "logging.tensorboard=false"]
FROZEN = os.path.join(SOURCE, "recipes/finetune/frozen_router.textproto")
LORA = os.path.join(SOURCE, "recipes/finetune/lora_experts.textproto")


def train(recipe, run, overrides, np=1):
    cmd = (MPIRUN + ["-np", str(np)] if np > 1 else []) + [os.path.join(BIN, "moe-train"), "--recipe", recipe, "--run-dir", run]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    check(proc.returncode == 0, f"moe-train {os.path.basename(recipe)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def final(run):
    with open(os.path.join(run, "checkpoints", "latest")) as f:
        step = f.read().strip()
    return load_checkpoint(os.path.join(run, "checkpoints", step)), os.path.join(run, "checkpoints", step)


def check_frozen_router(pre, run, label):
    before, _ = final(pre)
    after, step_dir = final(run)
    with open(os.path.join(run, "finetune_report.json")) as f:
        report = json.load(f)
    check(report["router_frozen"] and report["router_max_abs_change"] == 0, f"{label}: report {report}")
    moved = 0
    for name, t in after.items():
        if not name.startswith("model/"):
            continue
        if ".moe.router." in name:
            check(torch.equal(t, before[name]), f"{label}: {name} moved")
        elif not torch.equal(t, before[name]):
            moved += 1
    check(moved > 0, f"{label}: nothing but the router should train")
    check(not any(n.startswith("optim/") and ".moe.router." in n for n in after), f"{label}: optimizer state for the router")
    print(f"ok: {label}: router weights and expert biases unchanged, {moved} other tensors trained")


def check_lora(pre, run, label):
    before, _ = final(pre)
    after, _ = final(run)
    adapters = [n for n in after if n.startswith("model/") and "_lora_" in n]
    check(len(adapters) > 0, f"{label}: adapters saved")
    for name, t in after.items():
        if name.startswith("model/") and "_lora_" not in name:
            check(torch.equal(t, before[name]), f"{label}: base weight {name} moved")
    check(any(after[n].abs().max() > 0 for n in adapters if n.endswith("_lora_b")), f"{label}: adapters B still zero")
    optim = [n for n in after if n.startswith("optim/")]
    check(optim and all("_lora_" in n for n in optim), f"{label}: optimizer state beyond the adapters: {optim[:3]}")
    print(f"ok: {label}: base weights bitwise unchanged, {len(adapters)} adapter tensors trained")


# A short pretraining run to start from.
pre = fresh_dir("e2e_ft_pretrain")
train(TINY, pre, SMALL_DATA + SMALL + ["train.steps=6", "routing.bias_update_rate=0.01"])

# 1. Frozen router, EP=2 on 2 ranks.
frozen = fresh_dir("e2e_ft_frozen")
out = train(FROZEN, frozen, SMALL_DATA + SMALL + [f"finetune.init_from={pre}", "train.steps=4", "train.eval_interval=0",
                                                  "parallel.expert=2", "routing.bias_update_rate=0.01"], np=2)
check("initialised from" in out.stdout and "router frozen: router weights and expert biases moved by at most 0" in out.stdout,
      f"frozen-router messages:\n{out.stdout}")
check_frozen_router(pre, frozen, "frozen router, EP=2")

# 2. LoRA on experts, EP=2 on 2 ranks and one process.
lora2, lora1 = fresh_dir("e2e_ft_lora_ep2"), fresh_dir("e2e_ft_lora_1")
ft = SMALL_DATA + SMALL + [f"finetune.init_from={pre}", "train.steps=4", "train.eval_interval=0", "finetune.lora.rank=4"]
train(LORA, lora2, ft + ["parallel.expert=2"], np=2)
train(LORA, lora1, ft + ["train.grad_accum_steps=2"])
check_lora(pre, lora2, "LoRA, EP=2")
a, b = metrics(lora1), metrics(lora2)
worst = 0.0
for x, y in zip(a, b):
    for key in ("loss", "grad_norm"):
        rel = abs(x[key] - y[key]) / max(abs(x[key]), 1e-8)
        worst = max(worst, rel)
        check(rel <= 1e-5, f"LoRA step {x['step']} {key}: {x[key]} vs {y[key]}")
check(len(a) == len(b) == 4, "four steps each")
print(f"ok: LoRA EP=2 matches one process over 4 steps, worst relative difference {worst:.2e}")

# LoRA on the attention projections too (one process: attention adapters need parallel.tensor = 1).
lora_attn = fresh_dir("e2e_ft_lora_attn")
train(LORA, lora_attn, ft + ["finetune.lora.targets=[gate,up,down,attn_qkv,attn_out]"])
check_lora(pre, lora_attn, "LoRA on experts and attention")
names = load_checkpoint(final(lora_attn)[1])
check(any("attn.qkv_lora_b" in n for n in names) and any("attn.out_lora_b" in n for n in names), "attention adapters saved")

# 3. From an imported Hugging Face model, under mpirun.
warnings.filterwarnings("ignore")
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

root = fresh_dir("e2e_ft_imported")
torch.manual_seed(3)
MixtralForCausalLM(MixtralConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, num_local_experts=4,
                                 num_experts_per_tok=2, initializer_range=0.05)).save_pretrained(os.path.join(root, "hf"))
imported = os.path.join(root, "imported")
proc = subprocess.run([os.path.join(BIN, "moe-import"), "--hf", os.path.join(root, "hf"), "--out", imported],
                      capture_output=True, text=True)
check(proc.returncode == 0, f"moe-import failed:\n{proc.stdout}\n{proc.stderr}")
for name, finetune in (("frozen", "freeze_router: true"), ("lora", "lora { rank: 4 alpha: 8 }")):
    # The documented recipe for an imported model: its recipe as the base, plus the fine-tuning section.
    recipe = os.path.join(root, f"{name}.textproto")
    with open(recipe, "w") as f:
        f.write(f'base: "imported/recipe.textproto"\nfinetune {{ init_from: "{imported}" {finetune} }}\n'
                'routing { aux_loss_coeff: 0 }\n')
    run = os.path.join(root, f"run_{name}")
    train(recipe, run, SMALL_DATA[:3] + ["data.seq_len=32", "train.micro_batch_size=4", "train.steps=3",
                                         "train.eval_interval=0", "train.eval_sequences=4", "parallel.expert=2",
                                         "logging.tensorboard=false", "checkpoint.interval=0"], np=2)
    (check_frozen_router if name == "frozen" else check_lora)(imported, run, f"{name} from an imported Mixtral, EP=2")
