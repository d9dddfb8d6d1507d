"""moe-train's bad inputs: one clear message naming the field, value and fix, a non-zero exit, nothing written."""
import os

from common import check, fresh_dir, moe_train

cases = [
    (["train.stepz=5"], 2, "moe-train: error: --set train.stepz=5: unknown field \"stepz\" in train; did you mean \"steps\"?"),
    (["model.top_k=9"], 2, "  --set model.top_k=9: model.top_k = 9: must be between 1 and model.num_experts (8)"),
    (["parallel.expert=2"], 2, "moe-train: error: parallel.expert = 2 does not divide the data-parallel size 1 (world 1 / "
                               "parallel.tensor 1); launch a multiple of parallel.tensor × parallel.expert = 2 processes"),
    (["data.train_prefix=/nonexistent/train"], 1, "moe-train: error: /nonexistent/train.idx: cannot open; check data prefixes"),
    (["model.vocab_size=100"], 1, "token id 511 does not fit model.vocab_size = 100; set model.vocab_size to at least 512"),
    (["finetune.init_from=/nonexistent/run"], 1, "finetune.init_from = \"/nonexistent/run\" is neither a checkpoint (no "
                                                  "manifest.json) nor a run directory with checkpoints/latest"),
    (["train.device=CUDA"], 2, "moe-train: error: train.device = CUDA, but this process sees no GPU"),
    (["parallel.data_plane=NCCL"], 2, "moe-train: error: parallel.data_plane = NCCL needs the model on GPUs, but "
                                      "train.device resolved to the CPU; set parallel.data_plane = AUTO or HOST"),
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
print("ok")
