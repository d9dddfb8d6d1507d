#!/usr/bin/env bash
# Four processes: 2-way tensor × 2-way expert parallelism (data-parallel size 2); arguments after the
# script's own go to moe-train and win over the ones below (e.g. --run-dir DIR, --set train.steps=100).
#
#   bash launch/mpirun_example.sh                            this machine
#   HOSTFILE=hosts bash launch/mpirun_example.sh             across the nodes of HOSTFILE ("node0 slots=2"
#                                                            per line), started on the first node
# As root (containers) Open MPI needs --allow-run-as-root; --oversubscribe lets 4 ranks share fewer cores.
# Across nodes: Open MPI starts its daemons over ssh (password-less between the nodes), the repository,
# build and data sit at the same path on every node and the run directory on a shared filesystem; ranks of
# one node talk shared memory (vader), ranks of different nodes TCP. MPIRUN_ARGS adds Open MPI options,
# e.g. "--mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0" to pick the nodes' network (the test
# across simulated nodes, tests/e2e/cluster_parity.py, adds its own remote-start agent there).
# NP (default 4) is the number of ranks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
mpirun -np "${NP:-4}" ${HOSTFILE:+--hostfile "$HOSTFILE"} --allow-run-as-root --oversubscribe --bind-to none \
  -x OMP_NUM_THREADS=1 ${MPIRUN_ARGS:-} \
  "${MOETRAIN_BIN:-build/bin}/moe-train" --recipe recipes/pretrain/tiny.textproto \
  --set parallel.tensor=2 --set parallel.expert=2 --run-dir runs/tiny-tp2-ep2 "$@"
