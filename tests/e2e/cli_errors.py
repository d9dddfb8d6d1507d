"""moe-train's bad inputs: one clear message naming the field, value and fix, a non-zero exit, nothing written.
Then the command lines of every tool (tools/cli.h): a usage error names the flag, the value and the fix,
prints the usage and exits 2; retired spellings name the flag that replaced them."""
import os
import subprocess

from common import BIN, check, fresh_dir, moe_train

cases = [
    (["train.stepz=5"], 2, "moe-train: error: --set train.stepz=5: unknown field \"stepz\" in train; did you mean \"steps\"?"),
    (["model.top_k=9"], 2, "  --set model.top_k=9: model.top_k = 9: must be between 1 and model.num_experts (8)"),
    (["parallel.expert=2"], 2, "moe-train: error: parallel.expert = 2 × parallel.expert_tensor = 1: their product 2 does "
                               "not divide the world size 1; with 1 process these expert × expert_tensor sizes fit: 1 × 1"),
    (["data.train_prefix=/nonexistent/train"], 1, "moe-train: error: /nonexistent/train.idx: cannot open; check data prefixes"),
    (["model.vocab_size=100"], 1, "token id 511 does not fit model.vocab_size = 100; set model.vocab_size to at least 512"),
    (["finetune.init_from=/nonexistent/run"], 1, "finetune.init_from = \"/nonexistent/run\" is neither a checkpoint (no "
                                                  "manifest.json) nor a run directory with checkpoints/latest"),
    (["train.device=CUDA"], 2, "moe-train: error: train.device = CUDA, but this process sees no GPU"),
    (["parallel.data_plane=NCCL"], 2, "moe-train: error: parallel.data_plane = NCCL needs the model on GPUs, but "
                                      "train.device resolved to the CPU; set parallel.data_plane = AUTO or HOST"),
    (["routing.bias_update=PROPORTIONAL"], 2, "  --set routing.bias_update=PROPORTIONAL: routing.bias_update = PROPORTIONAL: "
                                              "chooses how the aux-loss-free bias moves, and it is off"),
    (["finetune.lora.targets=[gate,query]", "finetune.lora.rank=4"], 2, "  --set finetune.lora.targets=[gate,query]: finetune.lora.targets = \"query\": each target is one of"),
]
for overrides, code, message in cases:
    run = fresh_dir("e2e_cli_errors")
    proc = moe_train(run, overrides, check=False)
    check(proc.returncode == code, f"{overrides}: exit {proc.returncode}, expected {code}\n{proc.stderr}")
    check(message in proc.stderr, f"{overrides}: message {message!r} not in:\n{proc.stderr}")
    if code == 2 or overrides[0].startswith(("data.", "model.")):
        check(not os.path.exists(run), f"{overrides}: nothing written for a rejected recipe or rejected data")
# The host allocator choice is an environment variable: a typo is named, nothing is written.
run = fresh_dir("e2e_cli_errors")
proc = moe_train(run, [], env={"MOETRAIN_HOST_MALLOC": "jemalloc"}, check=False)
check(proc.returncode == 2 and "moe-train: error: MOETRAIN_HOST_MALLOC=jemalloc: must be keep" in proc.stderr,
      f"MOETRAIN_HOST_MALLOC=jemalloc: exit {proc.returncode}\n{proc.stderr}")
check(not os.path.exists(run), "MOETRAIN_HOST_MALLOC=jemalloc: nothing written")

usage_errors = [
    (["moe-train", "--recpe", "x"], "moe-train: error: unknown argument \"--recpe\"; did you mean --recipe?"),
    (["moe-train", "--run-dir", "r"], "moe-train: error: --recipe is required; pass --recipe FILE"),
    (["moe-eval", "--checkpoint", "c", "--data"], "moe-eval: error: --data needs a value; pass --data PREFIX"),
    (["moe-eval", "--checkpoint", "c", "--data", "d", "--precision", "fp16"],
     "moe-eval: error: --precision fp16: expected fp32 or bf16"),
    (["moe-export", "--checkpoint", "c", "--out", "o", "--format", "llama"],
     "moe-export: error: --format llama: expected auto, mixtral, qwen2_moe, qwen3_moe or olmoe"),
    (["moe-export", "--checkpoint", "c", "--out", "o", "--tokenizer", "t", "--no-tokenizer"],
     "moe-export: error: --tokenizer and --no-tokenizer exclude each other; pass one"),
    (["moe-import", "--hf", "h"], "moe-import: error: --out is required; pass --out RUN_DIR"),
    (["moe-ablate"], "moe-ablate: error: name a study file or a folder of variant recipes"),
    (["moe-ckpt"], "moe-ckpt: error: a command is required: verify or reshard"),
    (["moe-ckpt", "verify", "runs/x/checkpoints/step_00000002"],
     "moe-ckpt: error: verify runs/x/checkpoints/step_00000002: the checkpoint is a flag, as in reshard; pass verify "
     "--checkpoint runs/x/checkpoints/step_00000002"),
    (["moe-ckpt", "reshard", "--checkpoint", "c"], "moe-ckpt: error: --out is required; pass --out RUN_DIR"),
    (["moe-bench", "moe-layer", "--bf16", "1"],
     "moe-bench: error: --bf16 1: moe-bench spells precision as moe-eval does: pass --precision fp32 (was --bf16 0) "
     "or --precision bf16 (was --bf16 1)"),
    (["moe-bench", "moe-layer", "--breakdown", "1"], "moe-bench: error: --breakdown 1: --breakdown takes no value"),
    (["moe-bench", "moe-layer", "--tokens", "-4"], "moe-bench: error: --tokens -4: expected a non-negative integer"),
    (["moe-bench", "moe-lair"], "moe-bench: error: unknown benchmark \"moe-lair\""),
]
for args, message in usage_errors:
    proc = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, timeout=60)
    check(proc.returncode == 2 and message in proc.stderr and "usage: " + args[0] in proc.stderr,
          f"{args}: exit {proc.returncode}, expected 2 and {message!r} with the usage in:\n{proc.stderr}")
for tool in ("moe-train", "moe-eval", "moe-export", "moe-import", "moe-ablate", "moe-ckpt", "moe-bench"):
    proc = subprocess.run([os.path.join(BIN, tool), "--help"], capture_output=True, text=True, timeout=60)
    check(proc.returncode == 0 and proc.stdout.startswith("usage: " + tool), f"{tool} --help: {proc.returncode}\n{proc.stdout}")
print("ok")
