#!/usr/bin/env bash
# Runs the same short trainings with two builds and says whether they agree bit for bit: metrics.jsonl
# (tokens/s aside), the console lines, expert_load.jsonl, expert_domains.jsonl and every checkpoint shard.
# For changes that must not change behaviour (a refactor, a new communication path).
#   bash tools/compare_builds.sh OLD_BIN_DIR NEW_BIN_DIR [CORPUS_DIR]
# CORPUS_DIR: the small test corpus (default build/test_corpus, made by the test suite or by
# data/prepare_corpus.sh build/test_corpus --small). Layouts: one process dropless and with capacity,
# EP 2, TP 2 x EP 2, EP 2 x DP 2 (mpirun, oversubscribed); 6 steps with grad_accum 2, every balancing
# term and bias updates, evaluation and checkpoints at steps 3 and 6. Exits 1 when any layout differs.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
old=$1 new=$2 corpus=${3:-$root/build/test_corpus}
out=$(mktemp -d /tmp/moetrain-compare.XXXXXX)
recipe=$root/recipes/pretrain/tiny.textproto
sets=(data.train_prefix=$corpus/train data.valid_prefix=$corpus/valid data.tokenizer=$corpus/tokenizer.model
  model.vocab_size=512 model.d_model=64 model.num_layers=2 model.ffn_hidden=128 model.moe_ffn_hidden=64
  train.micro_batch_size=4 data.seq_len=32 train.eval_interval=3 train.eval_sequences=4 schedule.warmup_steps=3
  train.steps=6 checkpoint.interval=3 train.threads=1 routing.bias_update_rate=0.01 train.grad_accum_steps=2
  routing.seq_aux_loss_coeff=0.001 routing.global_aux_loss_coeff=0.001 routing.z_loss_coeff=0.001)
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
differ=0

digest() {  # checkpoints and expert logs of a run directory, as one hash
  (cd "$1" && find . -type f \( -name '*.safetensors' -o -name 'expert_*.jsonl' \) | sort | xargs sha256sum | sha256sum)
}

layout() {  # NAME NP [--set ...]
  local name=$1 np=$2
  shift 2
  local args=(--recipe "$recipe")
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  for which in old new; do
    local bin=$old launch=()
    [ "$which" = new ] && bin=$new
    ((np > 1)) && launch=("${mpirun[@]}" -np "$np")
    "${launch[@]}" "$bin/moe-train" "${args[@]}" "$@" --run-dir "$out/$name.$which" >"$out/$name.$which.log" 2>&1 ||
      { echo "$name: the $which build failed (log: $out/$name.$which.log)"; differ=1; return; }
  done
  local same=yes
  python3 - "$out/$name.old/metrics.jsonl" "$out/$name.new/metrics.jsonl" <<'PY' || same=no
import json, sys
runs = [[json.loads(line) for line in open(p)] for p in sys.argv[1:]]
for run in runs:
    for record in run:  # what depends on the clock
        for key in [k for k in record if k == "tokens_per_s" or k.startswith("comm_s")]:
            record.pop(key)
sys.exit(0 if runs[0] == runs[1] and runs[0] else 1)
PY
  for which in old new; do
    grep -v 'tok/s\|run directory\|ETA\|^launch: ' "$out/$name.$which.log" | sed "s#$out/$name.$which#RUN#g" >"$out/$name.$which.console"
  done
  cmp -s "$out/$name.old.console" "$out/$name.new.console" || same=no
  [ "$(digest "$out/$name.old")" = "$(digest "$out/$name.new")" ] || same=no
  echo "$name: $([ $same = yes ] && echo 'bitwise equal' || echo DIFFERENT)"
  [ $same = yes ] || differ=1
}

layout one_process 1
layout capacity 1 --set routing.capacity_factor=1.0 --set routing.eval_capacity_factor=1.0 --set routing.drop_policy=POSITION
layout ep2 2 --set parallel.expert=2
layout tp2_ep2 4 --set parallel.tensor=2 --set parallel.expert=2
layout ep2_dp2 4 --set parallel.expert=2
echo "runs in $out"
exit $differ
