#!/usr/bin/env bash
# The same binary under torchrun (the venv's torch provides it): 2 processes, expert parallelism.
# torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; moe-train connects to the TCP store
# there. Multi-node: on every node
#   torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:29500 --no-python build/bin/moe-train ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${MOETRAIN_VENV:-${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/venv}
OMP_NUM_THREADS=1 "$venv/bin/torchrun" --standalone --nproc-per-node 2 --no-python \
  build/bin/moe-train --recipe recipes/pretrain/tiny.textproto --set parallel.expert=2 --run-dir runs/tiny-torchrun "$@"
