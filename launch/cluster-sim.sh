#!/usr/bin/env bash
# A cluster of N simulated nodes on this one machine, for multi-node tests. Needs root.
#   cluster-sim.sh up N [--rate RATE]   make node0..node{N-1} (cleans any leftovers first)
#   cluster-sim.sh exec NODE CMD...     run CMD inside NODE; exits with CMD's status
#   cluster-sim.sh down                 remove everything `up` made (idempotent; safe after a partial
#                                       `up` or a killed test; ends the processes still in the nodes)
#   cluster-sim.sh status               list the nodes, their addresses, link rate and process count
# MOESIM_CLUSTER=NAME (letters and digits, up to 8) picks one of several clusters that may be up at once
# (namespaces `moesim.NAME-*`, state /run/moetrain-cluster.NAME); unset, the default cluster.
#
# Contract:
# - Node i is the network namespace `moesim-node<i>` with host name `node<i>` and address
#   10.213.0.(10+i)/24 on its `eth0`, one end of a veth pair whose other end (`vnode<i>`) is a port of
#   the bridge `br0` in the namespace `moesim-br`. Every namespace has its loopback up. Nothing is added
#   to the machine's own network namespace, and the subnet has no route out: no traffic leaves.
# - --rate RATE (tc units: 10gbit, 1gbit, 100mbit, 500mbps...) shapes each node's link both ways with
#   `tc tbf`: egress of the node's eth0 and egress of its bridge port (netem is not on this kernel).
# - Names: STATE/hosts lists localhost and every node; `exec` bind-mounts it over /etc/hosts in a mount
#   namespace of the command's own, so `getent hosts node1` works in any node and the host's
#   /etc/hosts is untouched.
# - Host names: each node's UTS namespace is made persistent by a bind mount of its nsfs file
#   (`unshare --uts=STATE/uts/NODE`), as `ip netns add` does for network namespaces. Chosen over a
#   long-lived holder process per node: there is no process that can die or be killed by a test and
#   take the host name with it, nothing to find by pid, and `down` is two umounts per node. Over a fresh
#   `unshare --uts` per command: all processes of a node share one UTS namespace, as on a real node.
# - `exec` is `ip netns exec` (its own mount namespace, /sys remounted for the node's interfaces) +
#   `nsenter --uts` + the /etc/hosts bind mount. Processes of a node are those in its network
#   namespace: `ip netns pids moesim-node<i>` lists them (a test that "loses a node" kills these).
# - up and down hold a lock (flock on /run), so two of them never interleave.
set -euo pipefail
cluster=${MOESIM_CLUSTER:-}
[[ -z $cluster || $cluster =~ ^[A-Za-z0-9]{1,8}$ ]] || {
  echo "[cluster-sim] error: MOESIM_CLUSTER='$cluster': use 1 to 8 letters or digits, or unset it" >&2; exit 2; }
state=/run/moetrain-cluster${cluster:+.$cluster}
prefix=moesim${cluster:+.$cluster}-  # every namespace of this cluster starts with it; down removes all such
bridge_ns=${prefix}br
subnet=10.213.0             # node i = $subnet.(10+i)/24
script=$(basename "${BASH_SOURCE[0]}")

say() { printf '[cluster-sim] %s\n' "$*"; }
die() { printf '[cluster-sim] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_root() {
  [ "$(id -u)" -eq 0 ] ||
    die "needs root (network namespaces, veth, bridge, tc and mounts): run it as root, e.g. sudo bash launch/$script $*"
  local t pkg
  for t in ip:iproute2 tc:iproute2 unshare:util-linux nsenter:util-linux mount:mount flock:util-linux; do
    pkg=${t#*:}; t=${t%%:*}
    command -v "$t" >/dev/null || die "'$t' is missing: apt-get install $pkg"
  done
}

lock() { exec 9</run; flock -w 120 9 || die "another up/down still holds the lock on /run after 120 s"; }

# Runs "$@"; on failure names the step, the command and its message, adds the fix, undoes the
# partial cluster and exits.
step() {
  local what=$1 fix=$2; shift 2
  local err
  if ! err=$("$@" 2>&1); then
    printf '[cluster-sim] error: %s failed: %s\n  %s\n  fix: %s\n' "$what" "$*" "$err" "$fix" >&2
    teardown >/dev/null 2>&1 || true
    exit 1
  fi
}

our_namespaces() { ip netns list 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 { print $1 }'; }

# Removes every namespace named $prefix*, the processes still in them, the UTS bind mounts and STATE.
teardown() {
  local ns pids f i p live=""
  for ns in $(our_namespaces); do
    [ "$(ip netns identify $$ 2>/dev/null)" != "$ns" ] || die "down from inside $ns: run it from the host"
  done
  pids=$(for ns in $(our_namespaces); do ip netns pids "$ns" 2>/dev/null || true; done)
  if [ -n "$pids" ]; then
    say "ending processes still in the nodes: $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do  # up to 5 s to end cleanly, then SIGKILL
      live=""
      for p in $pids; do kill -0 "$p" 2>/dev/null && live="$live $p"; done
      [ -n "$live" ] || break
      sleep 0.5
    done
    [ -z "$live" ] || kill -KILL $live 2>/dev/null || true
  fi
  for f in "$state"/uts/*; do
    [ -e "$f" ] || continue
    umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true
  done
  for ns in $(our_namespaces); do
    ip netns del "$ns" || die "cannot delete network namespace $ns: see 'ip netns pids $ns'"
  done
  rm -rf "$state"
}

# RATE in tc units -> bytes per second (tc's SI multipliers: 1kbit = 1000 bit).
rate_bytes() {
  local r=${1,,} n
  [[ $r =~ ^([0-9]+)([kmgt]?)(bit|bps)$ ]] ||
    die "--rate $1: expected a number and a unit, e.g. 10gbit, 1gbit, 100mbit, 500mbps"
  n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in k) n=$((n * 1000)) ;; m) n=$((n * 1000000)) ;;
    g) n=$((n * 1000000000)) ;; t) n=$((n * 1000000000000)) ;; esac
  [ "${BASH_REMATCH[3]}" = bps ] || n=$((n / 8))
  ((n > 0)) || die "--rate $1: must be above zero"
  echo "$n"
}

cmd_up() {
  local n=${1:-} rate="" arg
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 240)) || die "up N: N must be a number from 1 to 240 (got '${n}')"
  shift
  while (($#)); do
    arg=$1; shift
    case $arg in
      --rate) (($#)) || die "--rate needs a value, e.g. --rate 10gbit"; rate=$1; shift ;;
      --rate=*) rate=${arg#--rate=} ;;
      *) die "up: unknown argument '$arg' (usage: up N [--rate RATE])" ;;
    esac
  done
  local bytes=0 burst=0
  if [ -n "$rate" ]; then
    bytes=$(rate_bytes "$rate")
    # Bucket: 1 ms at the rate, at least 128 KiB (a veth carries GSO packets of up to 64 KiB).
    burst=$((bytes / 1000)); ((burst >= 131072)) || burst=131072
  fi
  need_root up "$n" ${rate:+--rate "$rate"}
  lock
  if [ -n "$(our_namespaces)" ] || [ -e "$state" ]; then
    say "removing leftovers of an earlier cluster"
    teardown
  fi
  mkdir -p "$state/uts"
  local nsfix="the kernel or container must allow network namespaces (CAP_SYS_ADMIN; a container needs --privileged)"
  step "making the bridge namespace" "$nsfix" ip netns add "$bridge_ns"
  step "loopback in $bridge_ns" "$nsfix" ip -n "$bridge_ns" link set lo up
  step "making the bridge" "the kernel needs bridge support (CONFIG_BRIDGE; modprobe bridge)" \
    ip -n "$bridge_ns" link add name br0 type bridge
  step "bridge up" "$nsfix" ip -n "$bridge_ns" link set br0 up
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
  } > "$state/hosts.tmp"
  local i node ns addr
  : > "$state/nodes.tmp"
  for ((i = 0; i < n; i++)); do
    node=node$i; ns=$prefix$node; addr=$subnet.$((10 + i))
    step "making namespace $ns" "$nsfix" ip netns add "$ns"
    step "loopback in $node" "$nsfix" ip -n "$ns" link set lo up
    step "veth pair for $node" "the kernel needs veth support (CONFIG_VETH; modprobe veth)" \
      ip -n "$bridge_ns" link add name "v$node" type veth peer name eth0 netns "$ns"
    step "bridge port v$node" "$nsfix" ip -n "$bridge_ns" link set "v$node" master br0 up
    step "address of $node" "$nsfix" ip -n "$ns" addr add "$addr/24" dev eth0
    step "eth0 of $node up" "$nsfix" ip -n "$ns" link set eth0 up
    : > "$state/uts/$node"
    step "host name of $node" "the kernel must allow UTS namespaces and bind mounts under $state" \
      unshare --uts="$state/uts/$node" hostname "$node"
    if [ -n "$rate" ]; then
      local tbf=(root tbf rate "$rate" burst "$burst" latency 50ms)
      step "shaping $node's link to $rate" "the kernel needs sch_tbf (CONFIG_NET_SCH_TBF); check --rate" \
        tc -n "$ns" qdisc add dev eth0 "${tbf[@]}"
      step "shaping traffic to $node to $rate" "the kernel needs sch_tbf (CONFIG_NET_SCH_TBF)" \
        tc -n "$bridge_ns" qdisc add dev "v$node" "${tbf[@]}"
    fi
    echo "$addr $node" >> "$state/hosts.tmp"
    echo "$node $addr" >> "$state/nodes.tmp"
  done
  echo "${rate:-unshaped}" > "$state/rate"
  mv "$state/hosts.tmp" "$state/hosts"
  mv "$state/nodes.tmp" "$state/nodes"
  say "up: $n node(s) on $subnet.0/24, links ${rate:-unshaped}; run commands with: bash launch/$script exec node0 CMD"
}

cmd_exec() {
  local node=${1:-}
  (($# >= 2)) || die "usage: exec NODE CMD... (e.g. exec node0 hostname)"
  shift
  need_root exec "$node" "$@"
  [ -f "$state/nodes" ] || die "no cluster is up: run 'bash launch/$script up N' first"
  grep -q "^$node " "$state/nodes" 2>/dev/null ||
    die "no node '$node' (nodes: $(cut -d' ' -f1 "$state/nodes" | paste -sd' '))"
  [ -e "/run/netns/$prefix$node" ] ||
    die "the namespace of $node is gone: run 'bash launch/$script up N' again"
  exec ip netns exec "$prefix$node" nsenter --uts="$state/uts/$node" -- \
    bash -c 'mount --bind "$0" /etc/hosts || exit 125; exec "$@"' "$state/hosts" "$@"
}

cmd_down() {
  need_root down
  lock
  teardown
  say "down: no simulated nodes left"
}

cmd_status() {
  local ns
  if [ ! -f "$state/nodes" ]; then
    say "no cluster is up"
    ns=$(our_namespaces | tr '\n' ' ')
    [ -z "$ns" ] || say "leftover namespaces: $ns(run 'bash launch/$script down')"
    return 0
  fi
  say "links: $(cat "$state/rate"); bridge namespace: $bridge_ns; hosts file: $state/hosts"
  local node addr alive procs
  while read -r node addr; do
    alive=up; procs=0
    if [ -e "/run/netns/$prefix$node" ]; then
      procs=$(ip netns pids "$prefix$node" 2>/dev/null | wc -l)
    else
      alive=missing
    fi
    printf '%-8s %-14s %-8s %s process(es)\n' "$node" "$addr" "$alive" "$procs"
  done < "$state/nodes"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  exec) shift; cmd_exec "$@" ;;
  down) shift; cmd_down ;;
  status) shift; cmd_status ;;
  *) usage ;;
esac
