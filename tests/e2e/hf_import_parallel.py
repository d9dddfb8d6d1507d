"""An imported Hugging Face checkpoint loads into another parallel layout: a random MixtralForCausalLM,
moe-import'ed, is resumed in place by one process (2 micro-batches per step) and by 2 MPI ranks with
expert parallelism 2 (each rank one micro-batch): the per-step losses agree within 1e-5 relative, so the
imported weights were resharded correctly; moe-eval then scores both final checkpoints (saved in their
own layouts) alike (docs/huggingface.md)."""
import json
import os
import shutil
import subprocess
import warnings

from common import BIN, CORPUS, check, fresh_dir

warnings.filterwarnings("ignore")
import torch  # noqa: E402
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
root = fresh_dir("e2e_hf_import_parallel")
torch.manual_seed(1)
MixtralForCausalLM(MixtralConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, num_local_experts=4,
                                 num_experts_per_tok=2, initializer_range=0.1)).save_pretrained(os.path.join(root, "hf"))
imported = os.path.join(root, "imported")
proc = subprocess.run([os.path.join(BIN, "moe-import"), "--hf", os.path.join(root, "hf"), "--out", imported],
                      capture_output=True, text=True)
check(proc.returncode == 0, f"moe-import failed:\n{proc.stderr}")

common = [f"data.train_prefix={CORPUS}/train", f"data.valid_prefix={CORPUS}/valid", "train.steps=3", "data.seq_len=64",
          "train.micro_batch_size=4", "train.eval_sequences=3", "train.eval_interval=0", "logging.tensorboard=false"]
layouts = {"1 process": ([], ["train.grad_accum_steps=2"]), "2 ranks, EP 2": (MPIRUN + ["-np", "2"], ["parallel.expert=2"])}
losses = {}
for name, (launcher, extra) in layouts.items():
    run = os.path.join(root, name.replace(" ", "_").replace(",", ""))
    shutil.copytree(imported, run)  # resume the imported step 0 in place
    cmd = launcher + [os.path.join(BIN, "moe-train"), "--recipe", os.path.join(run, "recipe.textproto"), "--run-dir", run]
    for o in common + extra:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    check(proc.returncode == 0, f"{name}: moe-train failed:\n{proc.stdout}\n{proc.stderr}")
    check("resumed from" in proc.stdout and "step_00000000" in proc.stdout, f"{name}: resumes the imported checkpoint")
    with open(os.path.join(run, "metrics.jsonl")) as f:
        losses[name] = [json.loads(line)["loss"] for line in f]
a, b = losses.values()
print(f"per-step loss, 1 process: {a}\n              2 ranks EP2: {b}")
check(len(a) == len(b) == 3, "three steps each")
for step, (x, y) in enumerate(zip(a, b), 1):
    check(abs(x - y) <= 1e-5 * abs(x), f"step {step}: {x} vs {y}")

# moe-eval reads each run's final checkpoint (saved in its own layout) into one process.
scores = {}
for name in layouts:
    run = os.path.join(root, name.replace(" ", "_").replace(",", ""))
    proc = subprocess.run([os.path.join(BIN, "moe-eval"), "--checkpoint", run, "--data", f"{CORPUS}/valid",
                           "--seq-len", "64", "--sequences", "3"], capture_output=True, text=True)
    check(proc.returncode == 0, f"moe-eval failed:\n{proc.stderr}")
    scores[name] = json.loads(proc.stdout)["loss"]
x, y = scores.values()
print(f"moe-eval of the final checkpoints: 1 process {x}, saved by 2 ranks with EP 2 {y}")
check(abs(x - y) <= 1e-5 * x, "moe-eval of checkpoints saved in two layouts")
print("ok")
