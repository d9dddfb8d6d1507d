#!/usr/bin/env bash
# README command 1: set up, prepare the multi-domain corpus, and train the tiny MoE recipe on it.
# Prints progress, then the validation perplexity next to the corpus's unigram baseline.
# Extra arguments go to moe-train (for example --set train.steps=100).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash launch/setup.sh
bash data/prepare_corpus.sh corpus
run_dir="runs/tiny-$(date +%Y%m%d-%H%M%S)"
echo "[quickstart] training recipes/pretrain/tiny.textproto into $run_dir"
build/bin/moe-train --recipe recipes/pretrain/tiny.textproto --run-dir "$run_dir" "$@"
echo "[quickstart] metrics: $run_dir/metrics.jsonl, TensorBoard: tensorboard --logdir $run_dir"
