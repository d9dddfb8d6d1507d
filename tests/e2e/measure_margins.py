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
"""
import argparse
import concurrent.futures as futures
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_dir, metrics, moe_train  # noqa: E402
from empirical import (BALANCE_U as U, BALANCE_UNBALANCED as UNBALANCED, ROUTING_BASE, ROUTING_VARIANTS,  # noqa: E402
                       TINY_RUN, mean_max_vio)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1234,1,2,3,4")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="bias,tiny,routing", help="comma list of the tests to measure")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.only.split(","))
    with futures.ThreadPoolExecutor(args.jobs) as pool:
        bias = {(s, b): pool.submit(bias_run, s, b) for s in seeds for b in (False, True)} if "bias" in only else {}
        tiny = {s: pool.submit(tiny_run, s) for s in seeds} if "tiny" in only else {}
        routing = ({(s, n): pool.submit(routing_run, s, n) for s in seeds for n in ROUTING_VARIANTS}
                   if "routing" in only else {})
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
            print(json.dumps({"seed": s, **table[s]}), flush=True)
    print("\n| quantity | threshold | " + " | ".join(f"seed {s}" for s in seeds) + " | worst | margin |")
    print("|---|---|" + "---|" * len(seeds) + "---|---|")
    for key, op, threshold in (("bias_ratio", "<", 0.6), ("loss_drop", ">", 1.5), ("ppl_ratio", "<", 0.8),
                               ("routing_min_fall", ">", 0.5), ("cf1_dropped", ">", 0.0)):
        if key not in table[seeds[0]]:
            continue
        values = [table[s][key] for s in seeds]
        worst = max(values) if op == "<" else min(values)
        margin = (f"{threshold / worst:.2f}x" if op == "<" else
                  (f"{worst / threshold:.2f}x" if threshold > 0 else "n/a"))
        print(f"| {key} | {op} {threshold} | " + " | ".join(f"{v:.4g}" for v in values) + f" | {worst:.4g} | {margin} |")


if __name__ == "__main__":
    main()
