#!/usr/bin/env python3
"""Peak resident memory of loading a Hugging Face model (docs/benchmarks.md, "Memory of import and of a
fine-tuning start").

    python tools/measure_load_memory.py WORK_DIR [--bin build/bin] [--corpus build/test_corpus] [--base-dtype FP32|BF16]

1. Makes a random MixtralForCausalLM (transformers, fp32, ~284 MB: vocabulary 16000, d_model 512, 4 layers,
   8 experts of hidden 1024, top-2) in WORK_DIR/hf unless it is there.
2. moe-import's peak resident memory (VmHWM, through /usr/bin/time -v) against the size of the files.
3. A LoRA fine-tuning start from the import under EP 2 (mpirun -np 2): each rank's peak resident memory
   over construction, the load of its experts and one tiny step (micro-batch 1 of 32 tokens, no checkpoint).
Prints one JSON object. The floor (LibTorch, MPI, the data, one step) is measured by the same two commands on a
tiny Mixtral (vocabulary 512, d_model 64, 2 layers: under 1 MB of weights); subtract it to see the model's share.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]


def peak_kb(stderr):
    """Every 'Maximum resident set size (kbytes)' that /usr/bin/time -v printed, in order."""
    return [int(v) for v in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", stderr)]


def run(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_mixtral(path, **sizes):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(num_key_value_heads=sizes["num_attention_heads"], num_local_experts=8,
                                     num_experts_per_tok=2, **sizes)).to(torch.float32).save_pretrained(path)


def finetune_start_peaks(args, imported, run_dir):
    """Each rank's peak resident memory (MB) over a LoRA fine-tuning start from `imported` under EP 2."""
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"data.train_prefix={args.corpus}/train", "data.valid_prefix=", "data.seq_len=32",
                 "train.micro_batch_size=1", "train.steps=1", "train.eval_interval=0", "parallel.expert=2",
                 "checkpoint.interval=0", "checkpoint.save_final=false", "logging.tensorboard=false",
                 f"finetune.init_from={imported}", "finetune.freeze_router=true", "finetune.lora.rank=8"]
    if args.base_dtype == "BF16":
        overrides += ["finetune.base_dtype=BF16", "train.precision=BF16"]
    cmd = MPIRUN + ["-np", "2", "/usr/bin/time", "-v", os.path.join(args.bin, "moe-train"), "--recipe",
                    os.path.join(imported, "recipe.textproto"), "--run-dir", run_dir]
    for o in overrides:
        cmd += ["--set", o]
    return [round(kb / 1024, 1) for kb in peak_kb(run(cmd, "fine-tuning start under EP 2").stderr)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--bin", default="build/bin")
    parser.add_argument("--corpus", default="build/test_corpus")
    parser.add_argument("--base-dtype", default="FP32", choices=["FP32", "BF16"])
    args = parser.parse_args()
    hf, tiny = os.path.join(args.work, "hf"), os.path.join(args.work, "hf_tiny")
    if not os.path.exists(os.path.join(hf, "config.json")):
        make_mixtral(hf, vocab_size=16000, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8)
    if not os.path.exists(os.path.join(tiny, "config.json")):
        make_mixtral(tiny, vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    files = sum(os.path.getsize(os.path.join(hf, f)) for f in os.listdir(hf) if f.endswith(".safetensors"))
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731

    peaks = {}
    for name, source in (("model", hf), ("tiny", tiny)):
        imported = os.path.join(args.work, f"imported_{name}")
        shutil.rmtree(imported, ignore_errors=True)
        proc = run(["/usr/bin/time", "-v", os.path.join(args.bin, "moe-import"), "--hf", source, "--out", imported], "moe-import")
        peaks[f"moe_import_{name}"] = mb(peak_kb(proc.stderr)[0])
        peaks[f"finetune_start_ep2_{name}"] = finetune_start_peaks(args, imported, os.path.join(args.work, f"finetune_{name}"))
    print(json.dumps({"safetensors_mb": round(files / 2**20, 1), "base_dtype": args.base_dtype,
                      "moe_import_peak_mb": peaks["moe_import_model"], "moe_import_tiny_model_peak_mb": peaks["moe_import_tiny"],
                      "finetune_start_ep2_peak_mb_per_rank": peaks["finetune_start_ep2_model"],
                      "finetune_start_ep2_tiny_model_peak_mb_per_rank": peaks["finetune_start_ep2_tiny"]}))


if __name__ == "__main__":
    main()
