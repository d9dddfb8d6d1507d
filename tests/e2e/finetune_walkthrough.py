"""The Qwen3-MoE walk-through of docs/finetuning.md, run as written on a small random model.

The bash and python blocks between the doc's walkthrough markers run in a scratch directory laid out like
the repository root (build/bin, data/tools, and recipes/finetune/qwen3_moe_lora.textproto copied from the
source tree) with only these changes, each asserted to apply exactly once:
- HF names a random Qwen3MoeForCausalLM that transformers creates (2 layers, d 64, 4 experts top 2, 2
  key/value heads, head_dim 24, router weights x20 so routing is far from uniform), saved in bf16 and
  sharded like the released model, with a Qwen3-shaped byte-level BPE tokenizer (vocabulary 1000 of the
  model's 1024) trained on the test corpus; VENV is the test's venv; GPUS=2;
- mpirun gets the test machine's flags (root, oversubscribed, one thread per rank);
- moe-train gets --set overrides that shorten the run (sequence length, steps, evaluation, checkpoints);
- my_data/{train,valid}.jsonl are documents of the test corpus.
Then it checks what the walk-through promises:
1. the import is a Qwen3-MoE (per-head q/k norm, GQA, head_dim) and the shards are AutoTokenizer's ids;
2. the run froze the router (report: moved by 0) and trained the adapters under EP 2 (loss is finite);
3. the exported base equals the source model bit for bit (bf16), carries the tokenizer (same ids as the
   source tokenizer, eos/pad ids in config.json), and the exported adapter loads with peft: its logits equal
   moe-eval's on validation windows within 1e-4 (both fp32: the run trained at bf16 precision, moe-eval
   --precision fp32 evaluates its weights with fp32 matmuls) and differ from the base model's;
4. the python block generated text (it printed the decoded prompt and continuation);
5. moe-export --tokenizer DIR refuses, writing nothing, a directory without tokenizer.json, a tokenizer with
   more ids than the model's vocabulary, and a tokenizer_config.json naming a token the tokenizer lacks.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))
from bpe_tokenizers import build_bpe_tokenizer  # noqa: E402
from common import BIN, CORPUS, SOURCE, check, fresh_dir, load_checkpoint  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(1)
DOC = os.path.join(SOURCE, "docs/finetuning.md")
RECIPE = "recipes/finetune/qwen3_moe_lora.textproto"
MPI_FLAGS = "--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1"
SHORTEN = ["data.seq_len=32", "train.steps=6", "train.eval_interval=3", "train.eval_sequences=2",
           "train.micro_batch_size=2", "train.grad_accum_steps=2", "checkpoint.interval=3", "train.threads=1",
           "optimizer.lr=0.02", "schedule.warmup_steps=1", "logging.tensorboard=false", "logging.log_interval=1"]
SEQ, DUMP = 32, 4


def walkthrough_blocks():
    """(bash, python) text of the doc's walkthrough: the fenced blocks between its markers."""
    text = open(DOC).read()
    m = re.search(r"<!-- walkthrough: qwen3_moe_lora.*?-->(.*?)<!-- /walkthrough -->", text, re.S)
    check(m is not None, f"{DOC} has no walkthrough markers")
    blocks = re.findall(r"```(bash|python)\n(.*?)```", m.group(1), re.S)
    check([b[0] for b in blocks] == ["bash", "python"], f"walkthrough blocks: {[b[0] for b in blocks]}")
    return blocks[0][1], blocks[1][1]


def replace_once(text, pattern, replacement):
    new, n = re.subn(pattern, replacement, text, flags=re.M)
    check(n == 1, f"walkthrough: {pattern!r} matched {n} times, expected once")
    return new


root = fresh_dir("e2e_finetune_walkthrough")
work = os.path.join(root, "repo")  # laid out like the repository root
for d in ("build", "data", "recipes/finetune", "my_data"):
    os.makedirs(os.path.join(work, d))
os.symlink(BIN, os.path.join(work, "build/bin"))
os.symlink(os.path.join(SOURCE, "data/tools"), os.path.join(work, "data/tools"))
shutil.copy(os.path.join(SOURCE, RECIPE), os.path.join(work, RECIPE))

# ---- the model directory a user would download: random weights, Qwen3-shaped tokenizer ---------------------
with open(os.path.join(CORPUS, "train.jsonl")) as f:
    train_docs = [json.loads(line) for line in f]
with open(os.path.join(CORPUS, "valid.jsonl")) as f:
    valid_docs = [json.loads(line) for line in f]
hf = os.path.join(root, "Qwen3-tiny")
build_bpe_tokenizer(hf, "qwen2", [d["text"] for d in train_docs[::3]], vocab_size=1000)
config = transformers.Qwen3MoeConfig(
    vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
    intermediate_size=96, moe_intermediate_size=48, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
    rope_theta=5000.0, rms_norm_eps=1e-6, max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False,
    eos_token_id=0, bos_token_id=None, pad_token_id=0)
torch.manual_seed(0)
source_model = transformers.Qwen3MoeForCausalLM(config).eval()
with torch.no_grad():
    for name, p in source_model.named_parameters():
        if "norm" in name:
            p.uniform_(0.5, 1.5)  # not all ones: a misplaced norm would show
        elif name.endswith("mlp.gate.weight"):
            p.mul_(20)  # routing far from uniform: a wrong expert choice changes the output
source_model.to(torch.bfloat16).save_pretrained(hf, max_shard_size="200KB")  # bf16 and sharded, as released
for split, docs in (("train", train_docs), ("valid", valid_docs)):
    with open(os.path.join(work, f"my_data/{split}.jsonl"), "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d["text"], "domain": d["domain"]}) + "\n")

# ---- the doc's blocks, with the test machine's values ---------------------------------------------------
bash, python = walkthrough_blocks()
bash = replace_once(bash, r"^HF=.*$", f"HF={hf}")
bash = replace_once(bash, r"^VENV=.*$", f"VENV={os.path.dirname(os.path.dirname(sys.executable))}")
bash = replace_once(bash, r"^GPUS=.*$", "GPUS=2")
bash = replace_once(bash, r"(^mpirun .*moe-train .*)$", r"\1 " + " ".join(f"--set {s}" for s in SHORTEN))
bash = f"set -euo pipefail\nmpirun() {{ command mpirun {MPI_FLAGS} \"$@\"; }}\nset -x\n" + bash
with open(os.path.join(root, "walkthrough.sh"), "w") as f:
    f.write(bash)
with open(os.path.join(root, "walkthrough_load.py"), "w") as f:
    f.write(python)
env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
proc = subprocess.run(["bash", os.path.join(root, "walkthrough.sh")], cwd=work, capture_output=True, text=True,
                      env=env, timeout=900)
log = proc.stdout + proc.stderr
check(proc.returncode == 0, f"walkthrough bash block failed ({proc.returncode}):\n{log[-6000:]}")
print(f"walkthrough bash block: ok ({len(bash.splitlines())} lines)")
proc = subprocess.run([sys.executable, os.path.join(root, "walkthrough_load.py")], cwd=work, capture_output=True,
                      text=True, env=env, timeout=600)
check(proc.returncode == 0, f"walkthrough python block failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
generated = proc.stdout.strip()
check(generated.startswith("Mixture-of-experts models route each token to") and
      len(generated) > len("Mixture-of-experts models route each token to"),
      f"walkthrough python block printed {generated!r}")
print(f"walkthrough python block: generated {generated!r}")

# ---- 1. import and data ----------------------------------------------------------------------------------
imported_recipe = open(os.path.join(work, "models/qwen3-moe/recipe.textproto")).read()
for line in ("num_kv_heads: 2", "head_dim: 24", "qk_norm: PER_HEAD", "normalize_gates: true", "num_experts: 4"):
    check(line in imported_recipe, f"imported recipe lacks {line!r}")
tokenizer = AutoTokenizer.from_pretrained(hf)
sys.path.insert(0, os.path.dirname(__file__))
from hf_tokenizer_encode import read_shards  # noqa: E402
shard_docs, _ = read_shards(os.path.join(work, "shards/qwen3-moe/valid"))
for i in (0, len(valid_docs) // 2, len(valid_docs) - 1):
    want = tokenizer(valid_docs[i]["text"])["input_ids"] + [tokenizer.eos_token_id]
    check(shard_docs[i] == want, f"valid document {i}: shard ids differ from AutoTokenizer's")
print(f"1. import: Qwen3-MoE recipe; shards: {len(shard_docs)} validation documents, AutoTokenizer's ids")

# ---- 2. the run: router frozen, adapters trained under EP 2 ----------------------------------------------
run = os.path.join(work, "runs/qwen3_moe_lora")
report = json.load(open(os.path.join(run, "finetune_report.json")))
check(report["router_frozen"] and report["router_max_abs_change"] == 0 and report["lora_rank"] == 16,
      f"finetune report {report}")
with open(os.path.join(run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
losses = [r["loss"] for r in rows if "loss" in r]
check(len(losses) >= 6 and all(x == x and x < 20 for x in losses), f"losses {losses}")
step = open(os.path.join(run, "checkpoints/latest")).read().strip()
trained = load_checkpoint(os.path.join(run, "checkpoints", step))
adapters = [k for k in trained if "_lora_" in k and k.startswith("model/")]
check(len(adapters) == 2 * 3 * 2, f"adapter tensors {adapters}")  # 2 MoE layers x 3 projections x (A, B)
print(f"2. run: {step}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, router moved by 0, {len(adapters)} adapter tensors")

# ---- 3. exports ------------------------------------------------------------------------------------------
base_dir, adapter_dir = (os.path.join(work, "exported", d) for d in ("qwen3-moe-base", "qwen3-moe-lora"))
exported_base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).eval()
check(type(exported_base).__name__ == "Qwen3MoeForCausalLM", f"base loads as {type(exported_base).__name__}")
src_state, out_state = source_model.state_dict(), exported_base.state_dict()
check(src_state.keys() == out_state.keys(), f"base tensor names differ: {set(src_state) ^ set(out_state)}")
for k in src_state:
    check(out_state[k].dtype == torch.bfloat16 and torch.equal(src_state[k], out_state[k]), f"exported base {k} differs")
print(f"3. exported base: {len(src_state)} tensors bit-identical to the source model (bf16)")
exported_tok = AutoTokenizer.from_pretrained(base_dir)
sample = valid_docs[0]["text"]
check(exported_tok(sample)["input_ids"] == tokenizer(sample)["input_ids"], "the exported tokenizer encodes differently")
exported_config = json.load(open(os.path.join(base_dir, "config.json")))
check(exported_config.get("eos_token_id") == tokenizer.eos_token_id and
      exported_config.get("pad_token_id") == tokenizer.pad_token_id, f"config.json token ids {exported_config}")

dump = os.path.join(root, "logits.safetensors")
proc = subprocess.run([os.path.join(BIN, "moe-eval"), "--checkpoint", run, "--data", os.path.join(work, "shards/qwen3-moe/valid"),
                       "--seq-len", str(SEQ), "--sequences", "2", "--precision", "fp32", "--dump-logits", dump,
                       "--dump-sequences", str(DUMP)],
                      capture_output=True, text=True, timeout=600)
check(proc.returncode == 0, f"moe-eval failed:\n{proc.stdout}\n{proc.stderr}")
d = load_file(dump)
inputs, ours = d["windows"][:DUMP, :SEQ].clone(), d["logits"].clone()
base32 = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
with torch.no_grad():
    base_logits = base32(input_ids=inputs).logits
    peft_logits = PeftModel.from_pretrained(base32, adapter_dir).eval()(input_ids=inputs).logits
d_peft = (peft_logits - ours).abs().max().item()
d_base = (base_logits - ours).abs().max().item()
print(f"3. base + PEFT adapter (fp32) vs moe-eval: max |logit diff| {d_peft:.3g} over {ours.numel()} logits; "
      f"base alone {d_base:.3g}")
check(d_peft < 1e-4, f"peft logits differ from moe-eval's by {d_peft}")
check(d_base > 1e-3, "the adapters change the logits")

# ---- 5. moe-export --tokenizer DIR refuses what is not this model's tokenizer, writing nothing --------------
def export_refused(tokenizer_dir, expected):
    out = os.path.join(root, "refused")
    p = subprocess.run([os.path.join(BIN, "moe-export"), "--checkpoint", run, "--out", out, "--tokenizer", tokenizer_dir],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 1 and expected in p.stderr, f"--tokenizer {tokenizer_dir}: rc {p.returncode}, stderr {p.stderr!r}")
    check(not os.path.exists(out), f"a refused export left {out}")
    return p.stderr.strip().splitlines()[-1]

no_json = os.path.join(root, "no_tokenizer_json")
os.makedirs(no_json)
shutil.copy(os.path.join(hf, "config.json"), no_json)
errors = [export_refused(no_json, "has no tokenizer.json")]
too_big = os.path.join(root, "too_big")
shutil.copytree(hf, too_big)
spec = json.load(open(os.path.join(too_big, "tokenizer.json")))
spec["added_tokens"].append({**spec["added_tokens"][-1], "id": 5000, "content": "<|extra|>"})
json.dump(spec, open(os.path.join(too_big, "tokenizer.json"), "w"))
errors.append(export_refused(too_big, "ids up to 5000 but the model's vocab_size is 1024"))
mismatched = os.path.join(root, "mismatched")
shutil.copytree(hf, mismatched)
tok_config = json.load(open(os.path.join(mismatched, "tokenizer_config.json")))
json.dump({**tok_config, "eos_token": "</s>"}, open(os.path.join(mismatched, "tokenizer_config.json"), "w"))
errors.append(export_refused(mismatched, 'names eos_token "</s>", which is not a token of'))
print("5. refused:\n  " + "\n  ".join(errors))
print("ok")
