"""Peak tensor memory and step time of a recipe under memory-saving settings, one process (moe-train's
mem_peak_mib and mem_allocated_mib, docs/training.md; CPU: the counting allocator, GPU: the CUDA caching
allocator's counts).

  python3 tools/bench_memory.py [--recipe recipes/pretrain/tiny.textproto] [--corpus build/test_corpus]
      [--seq-lens 128,256,512,1024] [--steps 4] [--threads 2] [--settings none,full,moe,...]
      [--set field=value ...] [--json FILE]

Settings (each adds --set overrides to the recipe):
  none          train.recompute NONE
  full          FULL, every layer
  moe           SELECTIVE ["moe"]
  moe_act       SELECTIVE ["moe_act"]
  layernorm     SELECTIVE ["layernorm"]
  core_attn     SELECTIVE ["core_attn"]
  act_norm      SELECTIVE ["moe_act", "layernorm", "core_attn"] (Megatron's cheap set)
Per sequence length and setting: the last step's peak (MiB), the allocation at the step's start, the
activation memory (peak - start) and the median step time of the steps after the first; prints JSON
lines and a Markdown table (docs/benchmarks.md)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "none": [],
    "full": ["train.recompute=FULL"],
    "moe": ["train.recompute=SELECTIVE", 'train.recompute_modules=["moe"]'],
    "moe_act": ["train.recompute=SELECTIVE", 'train.recompute_modules=["moe_act"]'],
    "layernorm": ["train.recompute=SELECTIVE", 'train.recompute_modules=["layernorm"]'],
    "core_attn": ["train.recompute=SELECTIVE", 'train.recompute_modules=["core_attn"]'],
    "act_norm": ["train.recompute=SELECTIVE", 'train.recompute_modules=["moe_act", "layernorm", "core_attn"]'],
}


def run(args, seq_len, setting):
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [os.path.join(args.bin, "moe-train"), "--recipe", args.recipe, "--run-dir", run_dir]
        overrides = [f"data.train_prefix={args.corpus}/train", f"data.valid_prefix={args.corpus}/valid",
                     f"data.tokenizer={args.corpus}/tokenizer.model", "model.vocab_size=512",
                     f"data.seq_len={seq_len}", f"train.steps={args.steps}", "train.eval_interval=0",
                     "checkpoint.interval=0", f"train.threads={args.threads}"] + args.set + SETTINGS[setting]
        for o in overrides:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"moe-train failed ({proc.returncode}):\n{proc.stderr}")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            steps = [json.loads(line) for line in f if '"grad_norm"' in line]
    last = steps[-1]
    tokens = last["tokens"] / last["step"]
    seconds = statistics.median(tokens / r["tokens_per_s"] for r in steps[1:])
    return {"seq_len": seq_len, "setting": setting, "peak_mib": last["mem_peak_mib"],
            "start_mib": last["mem_allocated_mib"], "activation_mib": last["mem_peak_mib"] - last["mem_allocated_mib"],
            "step_s": seconds, "loss": last["loss"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=os.path.join(ROOT, "recipes/pretrain/tiny.textproto"))
    p.add_argument("--corpus", default=os.path.join(ROOT, "build/test_corpus"))
    p.add_argument("--bin", default=os.path.join(ROOT, "build/bin"))
    p.add_argument("--seq-lens", default="128,256,512,1024")
    p.add_argument("--settings", default="none,full,moe,moe_act,layernorm,core_attn,act_norm")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="field=value for every run")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    rows = []
    for seq_len in [int(s) for s in args.seq_lens.split(",")]:
        for setting in args.settings.split(","):
            rows.append(run(args, seq_len, setting))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\n| seq_len | setting | peak MiB | at step start | activations MiB | vs none | step s | vs none |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b["seq_len"] == r["seq_len"] and b["setting"] == rows[0]["setting"])
        print(f"| {r['seq_len']} | {r['setting']} | {r['peak_mib']:.1f} | {r['start_mib']:.1f} | "
              f"{r['activation_mib']:.1f} | {r['activation_mib'] / base['activation_mib']:.2f} | {r['step_s']:.3f} | "
              f"{r['step_s'] / base['step_s']:.2f} |")
    losses = {r["setting"]: r["loss"] for r in rows if r["seq_len"] == rows[0]["seq_len"]}
    if len(set(losses.values())) != 1:
        sys.exit(f"the settings' losses differ: {losses}")


if __name__ == "__main__":
    main()
