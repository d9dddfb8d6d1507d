"""Shared helpers of the end-to-end tests: run the real moe-train binary on the small test corpus."""
import json
import os
import subprocess
import sys

SOURCE = os.environ["MOETRAIN_SOURCE_DIR"]
BIN = os.environ["MOETRAIN_BIN"]
CORPUS = os.environ["MOETRAIN_TEST_CORPUS"]
TINY = os.path.join(SOURCE, "recipes/pretrain/tiny.textproto")

# The tiny recipe on the small test corpus (vocabulary 512).
SMALL_DATA = [f"data.train_prefix={CORPUS}/train", f"data.valid_prefix={CORPUS}/valid",
              f"data.tokenizer={CORPUS}/tokenizer.model", "model.vocab_size=512"]


def moe_train(run_dir, overrides, recipe=TINY, env=None, check=True):
    cmd = [os.path.join(BIN, "moe-train"), "--recipe", recipe, "--run-dir", run_dir]
    for o in SMALL_DATA + overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        sys.exit(f"moe-train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def matches_one_process(single, run, label, steps, tolerance=1e-5):
    """A parallel run's per-step loss terms, gradient norm, max_vio and validation loss equal one process's within
    `tolerance` relative (the parity tolerance; docs/parallelism.md gives its margin); prints the worst."""
    a, b = metrics(single), metrics(run)
    check(len(a) == len(b) == steps, f"{label}: {steps} steps each ({len(a)}, {len(b)})")
    worst = 0.0
    for x, y in zip(a, b):
        for key in ("loss", "lm_loss", "aux_loss", "grad_norm", "max_vio", "val_loss"):
            if key in x:
                rel = abs(x[key] - y[key]) / max(abs(x[key]), 1e-8)
                worst = max(worst, rel)
                check(rel <= tolerance, f"{label} step {x['step']} {key}: {x[key]!r} vs {y[key]!r} (rel {rel:.2e})")
    print(f"{label}: {steps} steps agree with one process, worst relative difference {worst:.2e}")


def without_timings(record):
    """A metrics.jsonl record without what depends on the clock (tokens_per_s, the comm_s* seconds) or on
    the process's history (mem_*: tensor memory, which differs between a resumed and a continuous run)."""
    return {k: v for k, v in record.items()
            if k != "tokens_per_s" and not k.startswith("comm_s") and not k.startswith("mem_")}


def fresh_dir(name):
    path = os.path.join(os.environ.get("MOETRAIN_TEST_TMP", "/tmp"), name)
    subprocess.run(["rm", "-rf", path], check=True)
    return path


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)


def load_checkpoint(step_dir):
    """Global tensors of a moetrain checkpoint, assembled from its safetensors shards with the manifest
    (read with the real `safetensors` package): {"model/<name>": tensor, "optim/...": tensor, ...}.
    Fused attention weights are stored as (3, D, D) and returned as the model holds them, (3·D, D)."""
    import torch
    from safetensors import safe_open
    with open(os.path.join(step_dir, "manifest.json")) as f:
        manifest = json.load(f)
    out = {}
    handles = {}
    for name, t in manifest["tensors"].items():
        if name.startswith("rng/"):
            continue
        full = None
        for s in t["shards"]:
            if s["file"] not in handles:
                handles[s["file"]] = safe_open(os.path.join(step_dir, s["file"]), framework="pt")
            block = handles[s["file"]].get_tensor(name)
            if full is None:
                full = torch.zeros(t["shape"], dtype=block.dtype)
            index = tuple(slice(o, o + n) for o, n in zip(s["offsets"], s["shape"]))
            full[index] = block
        if name.endswith("attn.wqkv.weight"):
            full = full.reshape(-1, full.shape[-1])
        out[name] = full
    return out
