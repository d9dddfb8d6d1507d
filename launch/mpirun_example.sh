#!/usr/bin/env bash
# Four processes on this machine: 2-way tensor × 2-way expert parallelism (data-parallel size 2).
# Multi-node: add --hostfile FILE (or -H host1:4,host2:4) and launch from the first node.
# As root (containers) Open MPI needs --allow-run-as-root; --oversubscribe lets 4 ranks share fewer cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mpirun -np 4 --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 \
  build/bin/moe-train --recipe recipes/pretrain/tiny.textproto \
  --set parallel.tensor=2 --set parallel.expert=2 --run-dir runs/tiny-tp2-ep2 "$@"
