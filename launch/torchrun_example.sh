#!/usr/bin/env bash
# The same binary under torchrun (the venv's torch provides it), expert parallelism 2; arguments after the
# script's own go to moe-train and win over the ones below (e.g. --run-dir DIR, --set train.steps=100).
# torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; moe-train joins the TCP store there.
#
#   bash launch/torchrun_example.sh                          one node, 2 processes (--standalone)
#   NNODES=2 NODE_RANK=R RDZV_ENDPOINT=node0:29400 bash launch/torchrun_example.sh
#                                                            on every node R = 0..NNODES-1, at about the
#                                                            same time (tested across simulated nodes:
#                                                            tests/e2e/cluster_parity.py)
# Across nodes: the repository, the build and the data at the same path on every node, the run directory on a
# filesystem all nodes share (rank 0 writes the logs, every rank its checkpoint shards), RDZV_ENDPOINT a
# host:port of the first node that the others reach (the rendezvous; the agent there also hosts the store the
# ranks use). NPROC_PER_NODE (default 2) processes per node; RDZV_ID names the job (default moetrain).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${MOETRAIN_VENV:-${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/venv}
nnodes=${NNODES:-1}
if [ "$nnodes" = 1 ]; then
  where=(--standalone)
else
  [ -n "${RDZV_ENDPOINT:-}" ] || { echo "torchrun_example.sh: NNODES=$nnodes needs RDZV_ENDPOINT=HOST:PORT of the first node (e.g. node0:29400)" >&2; exit 2; }
  [ -n "${NODE_RANK:-}" ] || { echo "torchrun_example.sh: NNODES=$nnodes needs NODE_RANK (0 on the first node, 1.. on the others)" >&2; exit 2; }
  where=(--nnodes "$nnodes" --node-rank "$NODE_RANK" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT"
         --rdzv-id "${RDZV_ID:-moetrain}")
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$venv/bin/torchrun" "${where[@]}" --nproc-per-node "${NPROC_PER_NODE:-2}" \
  --no-python "${MOETRAIN_BIN:-build/bin}/moe-train" --recipe recipes/pretrain/tiny.textproto \
  --set parallel.expert=2 --run-dir runs/tiny-torchrun "$@"
