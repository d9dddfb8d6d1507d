#!/usr/bin/env bash
# Open MPI's remote-start agent for the simulated cluster (launch/cluster-sim.sh): `NODE CMD...` runs CMD in
# that node, as ssh would on a real one. Use it with mpirun started inside a node:
#   bash launch/cluster-sim.sh exec node0 mpirun --hostfile HOSTFILE -np 4 \
#     --mca plm_rsh_agent launch/cluster-sim-rsh.sh --mca btl self,vader,tcp \
#     --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 CMD
# (vader, shared memory, only between ranks of one node; TCP on the node links between nodes.)
set -euo pipefail
node=$1
shift
exec bash "$(dirname "${BASH_SOURCE[0]}")/cluster-sim.sh" exec "$node" bash -c "$*"
