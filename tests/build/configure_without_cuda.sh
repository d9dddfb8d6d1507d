#!/usr/bin/env bash
# The project configures on a machine without a CUDA toolkit: the PyPI torch wheel's CMake package looks
# for one and stops without it, which cmake/CudaToolkit.cmake works around. The toolkit is hidden in a
# private mount namespace (tmpfs over its directory, /dev/null over any nvcc on PATH), so this needs root
# (or user namespaces); it is skipped (exit 77) where neither is available.
# usage: configure_without_cuda.sh SOURCE_DIR MOETRAIN_PYTHON SCRATCH_DIR
set -euo pipefail
src=$1 python=$2 scratch=$3
if unshare -m true 2>/dev/null; then ns=(unshare -m)
elif unshare -m --map-root-user true 2>/dev/null; then ns=(unshare -m --map-root-user)
else echo "SKIP: cannot make a mount namespace here"; exit 77
fi
rm -rf "$scratch"
"${ns[@]}" bash -c '
  set -euo pipefail
  for d in /usr/local/cuda /usr/local/cuda-*; do
    [ -d "$d" ] && [ ! -L "$d" ] && mount -t tmpfs none "$d"
  done
  if [ -L /usr/local/cuda ] && [ -d "$(readlink -f /usr/local/cuda)" ]; then mount -t tmpfs none "$(readlink -f /usr/local/cuda)"; fi
  nvcc=$(command -v nvcc || true)
  if [ -n "$nvcc" ] && [ -e "$nvcc" ]; then mount --bind /dev/null "$nvcc"; fi
  cmake -S "$1" -B "$3" -DMOETRAIN_PYTHON="$2" > "$3.log" 2>&1 || { cat "$3.log"; exit 1; }
  grep -q "moetrain: no CUDA toolkit (nvcc) found" "$3.log" || { cat "$3.log"; echo "FAIL: the toolkit was not hidden"; exit 1; }
' _ "$src" "$python" "$scratch"
echo "ok: configured without a CUDA toolkit"
