#!/usr/bin/env bash
# launch/cluster-sim.sh makes nodes that are separate on the network and by host name, joined to each other
# only: each node has its own host name, resolves the others, reaches them over TCP, has no route off the
# test subnet, and `down` leaves nothing behind. Needs root (skipped, code 77, without it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
sim="$root/launch/cluster-sim.sh"
if [ "$(id -u)" -ne 0 ]; then echo "cluster_sim: needs root; skipped"; exit 77; fi
fail() { echo "cluster_sim: FAIL: $*" >&2; exit 1; }
trap 'bash "$sim" down >/dev/null 2>&1 || true; MOESIM_CLUSTER=csimtwo bash "$sim" down >/dev/null 2>&1 || true' EXIT

host_links_before=$(ip -br link | sort)
bash "$sim" up 2 --rate 1gbit
[ "$(bash "$sim" exec node0 hostname)" = node0 ] || fail "node0's host name"
[ "$(bash "$sim" exec node1 hostname)" = node1 ] || fail "node1's host name"
[ "$(hostname)" != node0 ] || fail "the host's own name changed"
bash "$sim" exec node0 getent hosts node1 | grep -q '^10\.213\.0\.11 ' || fail "node0 does not resolve node1"
bash "$sim" exec node0 tc qdisc show dev eth0 | grep -q tbf || fail "no tbf on node0's link"

# TCP from node0 to a one-shot server on node1.
bash "$sim" exec node1 python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 29500)); s.listen(1)
c, addr = s.accept(); c.sendall(("hello from node1 to " + addr[0]).encode()); c.close()' &
server=$!
reply=""
for _ in $(seq 50); do
  reply=$(bash "$sim" exec node0 python3 -c '
import socket
s = socket.create_connection(("node1", 29500), timeout=2); print(s.recv(100).decode())' 2>/dev/null) && break
  sleep 0.1
done
wait "$server" || true
[ "$reply" = "hello from node1 to 10.213.0.10" ] || fail "TCP node0 -> node1: got '$reply'"

# No route off the subnet.
if bash "$sim" exec node0 python3 -c 'import socket; socket.create_connection(("192.0.2.1", 80), timeout=1)' 2>/dev/null; then
  fail "node0 reached an address off the test subnet"
fi

# A second, named cluster beside the default one: its own namespaces, its down leaves the default one up.
MOESIM_CLUSTER=csimtwo bash "$sim" up 1 >/dev/null
[ "$(MOESIM_CLUSTER=csimtwo bash "$sim" exec node0 hostname)" = node0 ] || fail "node0 of the named cluster"
ip netns list | grep -q '^moesim\.csimtwo-node0' || fail "the named cluster's namespace"
MOESIM_CLUSTER=csimtwo bash "$sim" down >/dev/null
[ -e /run/netns/moesim-node1 ] || fail "down of the named cluster removed the default one"
[ -z "$(ip netns list | grep moesim.csimtwo || true)" ] || fail "the named cluster left namespaces"

bash "$sim" down
[ -z "$(ip netns list | grep moesim- || true)" ] || fail "namespaces left after down"
[ ! -e /run/moetrain-cluster ] || fail "state directory left after down"
[ "$(ip -br link | sort)" = "$host_links_before" ] || fail "the host's links changed"
echo "cluster_sim: 2 nodes: host names, names, TCP between them, no route out, tbf on the links; down left nothing; a named second cluster beside it"
