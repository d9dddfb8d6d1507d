#!/usr/bin/env bash
# Idempotent setup: Debian packages, a Python venv outside the clone with the pinned torch, and a build
# into build/ (binaries in build/bin/). Safe to run every time; seconds when nothing changed.
#   MOETRAIN_CACHE   cache root for the venv (default: ~/.cache/moetrain)
#   MOETRAIN_VENV    venv directory (default: $MOETRAIN_CACHE/venv); build/ is reconfigured when it changes
#   MOETRAIN_JOBS    build parallelism (default: 2)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MOETRAIN_CACHE:-$HOME/.cache/moetrain}
venv=${MOETRAIN_VENV:-$cache/venv}
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac  # absolute: it is compared with the CMake cache
jobs=${MOETRAIN_JOBS:-2}
mkdir -p "$cache"

say() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages (installed only when one is missing).
packages=(build-essential cmake ccache pkg-config python3-venv clang-format
  openmpi-bin libopenmpi-dev protobuf-compiler libprotobuf-dev
  libgtest-dev nlohmann-json3-dev libssl-dev libsentencepiece-dev sentencepiece
  fortunes fortunes-min fortunes-de fortunes-it fortunes-es fortunes-ru
  iproute2  # ip and tc: the simulated cluster (launch/cluster-sim.sh)
  slurmctld slurmd slurm-client munge)  # Slurm and its authentication, for the slurm_cluster test
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. Python venv with the pinned packages (reinstalled only when requirements.txt changes).
req="$root/launch/requirements.txt"
stamp="$venv/.moetrain-requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$req"
  echo "$want" > "$stamp"
fi

# 3. Configure and build (ccache keeps rebuilds of a fresh clone fast).
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache}
# Paths inside the clone are hashed relative to it, so a fresh clone anywhere (CI) hits the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root}
ccache --max-size=8G >/dev/null 2>&1 || true
# Configure when there is no cache, or when it names another venv's python (MOETRAIN_VENV or
# MOETRAIN_CACHE changed): then the cache is dropped, since Torch's paths in it point into the old venv.
python="$venv/bin/python"
cache_file="$root/build/CMakeCache.txt"
cached_python=$(sed -n 's/^MOETRAIN_PYTHON:[A-Z]*=//p' "$cache_file" 2>/dev/null || true)
if [ ! -f "$cache_file" ] || [ "$cached_python" != "$python" ]; then
  if [ -f "$cache_file" ]; then
    say "build/ was configured with MOETRAIN_PYTHON=${cached_python:-(unset)}; reconfiguring for $python"
  fi
  say "configuring build/"
  # Under the build lock: never reconfigure under a build that is running.
  flock "$cache/build.lock" bash -c 'rm -f "$1" && cmake -S "$2" -B "$2/build" -DCMAKE_BUILD_TYPE=Release -DMOETRAIN_PYTHON="$3" >/dev/null' \
    _ "$cache_file" "$root" "$python"
fi
say "building (-j$jobs)"
flock "$cache/build.lock" cmake --build "$root/build" -j "$jobs"
say "ready: binaries in build/bin/"
