"""Measures, over several seeds, every quantity that an end-to-end test compares with an empirical threshold
(a property of training on the real corpus, not an exact identity), so that each test can state how far
its threshold is from what was measured. Not a CTest test: run it by hand after anything that changes
training or the corpus, and copy the table into the tests' comments and docs/benchmarks.md.

  MOETRAIN_SOURCE_DIR=. MOETRAIN_BIN=build/bin MOETRAIN_TEST_CORPUS=build/test_corpus \
  MOETRAIN_TEST_TMP=/tmp/margins OMP_NUM_THREADS=1 python tests/e2e/measure_margins.py [--seeds 1234,1,2,3,4] [--jobs 2]

Quantities (test: threshold):
  bias_ratio        bias_balancing_lowers_maxvio: mean MaxVio (last 50 of 200 steps) with bias balancing
                    (rate BALANCE_U) / without; must be < 0.6
  loss_drop         train_tiny_loss_falls: first lm_loss - mean of the last 10 (80 steps); must be > 1.5
  ppl_ratio         train_tiny_loss_falls: validation perplexity / unigram baseline; must be < 0.8
  routing_min_fall  routing_strategies_train: the smallest lm_loss fall over its 15 variants (30 steps); must be > 0.5
  cf1_dropped       routing_strategies_train: summed dropped fraction of capacity_drop (factor 1.0); must be > 0
  bf16_first_steps  bf16_tracks_fp32: worst relative loss difference bf16 vs fp32 over the first 10 steps
  bf16_val          bf16_tracks_fp32: relative difference of the final validation loss (50 steps)
  bf16_worst_step   (not a threshold) the worst relative loss difference over all 50 steps

bf16 is measured once per oneDNN instruction set of --isas (ONEDNN_MAX_CPU_ISA: AVX2, AVX512_CORE,
AVX512_CORE_BF16, AVX512_CORE_AMX; "default" = what the CPU has), each against the same fp32 run: the
bf16 GEMMs run on other kernels, with another blocking and accumulation order, under each. Ask only for
the sets the CPU has (oneDNN silently stops at the CPU's best): lscpu's flags avx512_bf16 and amx_bf16.
"""
import argparse
import concurrent.futures as futures
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_dir, metrics, moe_train  # noqa: E402
from empirical import (BALANCE_U as U, BALANCE_UNBALANCED as UNBALANCED, BF16_FIRST_STEPS_REL,  # noqa: E402
                       BF16_RUN, BF16_VAL_REL, ROUTING_BASE, ROUTING_VARIANTS, TINY_RUN, bf16_against_fp32, mean_max_vio)


def bias_run(seed, with_bias):
    run = fresh_dir(f"margins_bias_{seed}_{int(with_bias)}")
    moe_train(run, UNBALANCED + [f"train.seed={seed}"] + ([f"routing.bias_update_rate={U}"] if with_bias else []))
    return mean_max_vio(run)


def tiny_run(seed):
    run = fresh_dir(f"margins_tiny_{seed}")
    proc = moe_train(run, TINY_RUN + [f"train.seed={seed}"])
    rows = metrics(run)
    unigram = float(re.search(r"unigram baseline perplexity on validation: ([0-9.]+)", proc.stdout).group(1))
    first, last = rows[0]["lm_loss"], sum(r["lm_loss"] for r in rows[-10:]) / 10
    return first - last, rows[-1]["val_ppl"] / unigram


def routing_run(seed, name):
    run = fresh_dir(f"margins_routing_{seed}_{name}")
    moe_train(run, ROUTING_BASE + ROUTING_VARIANTS[name] + [f"train.seed={seed}"])
    rows = metrics(run)
    return rows[0]["lm_loss"] - rows[-1]["lm_loss"], sum(r["dropped_frac"] for r in rows)


def bf16_run(seed, isa):
    """Metrics of the 50-step run at seed; isa None: fp32, else bf16 under ONEDNN_MAX_CPU_ISA=isa."""
    run = fresh_dir(f"margins_bf16_{seed}_{isa or 'fp32'}")
    env = {} if isa in (None, "default") else {"ONEDNN_MAX_CPU_ISA": isa}
    moe_train(run, BF16_RUN + [f"train.seed={seed}"] + (["train.precision=BF16"] if isa else []), env=env)
    return metrics(run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1234,1,2,3,4")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="bias,tiny,routing,bf16", help="comma list of the tests to measure")
    ap.add_argument("--isas", default="default", help="comma list of ONEDNN_MAX_CPU_ISA values for bf16")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.only.split(","))
    isas = args.isas.split(",")
    with futures.ThreadPoolExecutor(args.jobs) as pool:
        bias = {(s, b): pool.submit(bias_run, s, b) for s in seeds for b in (False, True)} if "bias" in only else {}
        tiny = {s: pool.submit(tiny_run, s) for s in seeds} if "tiny" in only else {}
        routing = ({(s, n): pool.submit(routing_run, s, n) for s in seeds for n in ROUTING_VARIANTS}
                   if "routing" in only else {})
        bf16 = ({(s, i): pool.submit(bf16_run, s, i) for s in seeds for i in [None] + isas}
                if "bf16" in only else {})
        table = {}
        for s in seeds:
            table[s] = {}
            if bias:
                table[s]["bias_ratio"] = bias[(s, True)].result() / bias[(s, False)].result()
            if tiny:
                table[s]["loss_drop"], table[s]["ppl_ratio"] = tiny[s].result()
            if routing:
                falls = {n: routing[(s, n)].result()[0] for n in ROUTING_VARIANTS}
                worst = min(falls, key=falls.get)
                table[s].update({"routing_min_fall": falls[worst], "routing_min_fall_variant": worst,
                                 "cf1_dropped": routing[(s, "capacity_drop")].result()[1]})
            for isa in isas if bf16 else []:
                m = bf16_against_fp32(bf16[(s, None)].result(), bf16[(s, isa)].result())
                suffix = "" if isa == "default" else f"@{isa}"
                table[s].update({f"bf16_{k}{suffix}": v for k, v in m.items()})
            print(json.dumps({"seed": s, **table[s]}), flush=True)
    print("\n| quantity | threshold | " + " | ".join(f"seed {s}" for s in seeds) + " | worst | margin |")
    print("|---|---|" + "---|" * len(seeds) + "---|---|")
    rows = [("bias_ratio", "<", 0.6), ("loss_drop", ">", 1.5), ("ppl_ratio", "<", 0.8),
            ("routing_min_fall", ">", 0.5), ("cf1_dropped", ">", 0.0)]
    for isa in isas:
        suffix = "" if isa == "default" else f"@{isa}"
        rows += [(f"bf16_first_steps{suffix}", "<", BF16_FIRST_STEPS_REL), (f"bf16_val{suffix}", "<", BF16_VAL_REL),
                 (f"bf16_worst_step{suffix}", "<", float("inf"))]
    for key, op, threshold in rows:
        if key not in table[seeds[0]]:
            continue
        values = [table[s][key] for s in seeds]
        worst = max(values) if op == "<" else min(values)
        margin = (f"{threshold / worst:.2f}x" if op == "<" and threshold != float("inf") else "n/a" if op == "<" else
                  (f"{worst / threshold:.2f}x" if threshold > 0 else "n/a"))
        print(f"| {key} | {op} {threshold} | " + " | ".join(f"{v:.4g}" for v in values) + f" | {worst:.4g} | {margin} |")


if __name__ == "__main__":
    main()
