#!/usr/bin/env bash
# Makes the GPU check's bundle: everything launch/gpu-check.sh needs on a GPU machine that has only the
# NVIDIA driver and a Python with the pinned torch wheel (cu130) — no network, none of our Debian
# packages. docs/gpu.md says what it holds and why.
#
# usage: launch/gpu-bundle.sh [OUT_DIR] [--tar]
#   OUT_DIR  default build/gpu-bundle (replaced if it exists)
#   --tar    also write OUT_DIR.tar.gz next to it
#   MOETRAIN_VENV  the venv whose torch the binaries were built against (default ~/.cache/moetrain/venv)
#
# It needs a built tree (launch/setup.sh; the binaries in build/bin and build/tests) and the small test
# corpus build/test_corpus, which it makes when missing (seconds; CTest's corpus_small_prepare makes it
# too: `bash data/prepare_corpus.sh build/test_corpus --small`). Shared libraries are collected with
# ldd, resolving against torch's own libraries first as the GPU machine will: what torch's wheel and its
# nvidia-* wheels provide (libtorch*, libc10*, CUDA runtime, cuBLAS, NCCL, libgomp) and glibc's core
# libraries stay out; everything else (libstdc++ and libgcc_s included: the target's may be older) goes
# into lib/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$root/build/gpu-bundle" tar=0
for a in "$@"; do
  case "$a" in
    --tar) tar=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "gpu-bundle: unknown option $a (usage: launch/gpu-bundle.sh [OUT_DIR] [--tar])" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
venv=${MOETRAIN_VENV:-${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/venv}
say() { printf '[gpu-bundle] %s\n' "$*"; }
die() { printf '[gpu-bundle] error: %s\n' "$*" >&2; exit 1; }

limit_mib=60
bin_dir="$root/build/bin" test_dir="$root/build/tests" corpus="$root/build/test_corpus"
binaries=("$bin_dir/moe-train" "$bin_dir/moe-bench")
# gpu_test: the CUDA unit tests; multirank_test: the NCCL communicator and MPI staging tests (2 ranks).
tests=("$test_dir/gpu_test" "$test_dir/multirank_test")
for f in "${binaries[@]}" "${tests[@]}"; do
  [ -x "$f" ] || die "$f is missing: build first (bash launch/setup.sh, or cmake --build build --target $(basename "$f"))"
done
python="$venv/bin/python"
[ -x "$python" ] || die "no venv python at $python (run launch/setup.sh or set MOETRAIN_VENV)"
corpus_files=(train.bin train.idx valid.bin valid.idx tokenizer.model)
corpus_complete() { local f; for f in "${corpus_files[@]}"; do [ -f "$corpus/$f" ] || return 1; done; }
if ! corpus_complete; then
  # A checkout that has only been set up has no test corpus yet: make it (seconds). Only then: CTest's
  # tests read this folder, and a complete one stays as it is.
  say "the small test corpus $corpus is missing or incomplete: making it (bash data/prepare_corpus.sh build/test_corpus --small)"
  rm -f "$corpus/.done"  # an incomplete corpus is remade whatever its stamp says
  MOETRAIN_BIN="$bin_dir" MOETRAIN_PYTHON="$python" bash "$root/data/prepare_corpus.sh" "$corpus" --small ||
    die "making the small corpus in $corpus failed (output above); fix that, then run bash data/prepare_corpus.sh build/test_corpus --small"
  corpus_complete || die "data/prepare_corpus.sh finished but $corpus lacks one of ${corpus_files[*]}"
fi
torch_lib=$("$python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
site=$(dirname "$(dirname "$torch_lib")")
torch_path="$torch_lib"
for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && torch_path="$torch_path:$d"; done

# Open MPI 4.1 (Debian 12): orterun/orted, the MCA plugins and help files. Relocated with OPAL_PREFIX:
# Open MPI derives its plugin and help directories from the prefix, keeping the paths below it.
ompi_prefix=/usr
ompi_libdir=/usr/lib/x86_64-linux-gnu/openmpi/lib
ompi_plugins="$ompi_libdir/openmpi3"
pmix_prefix=/usr/lib/x86_64-linux-gnu/pmix2
[ -x /usr/bin/orterun ] && [ -d "$ompi_plugins" ] || die "Open MPI 4.1 (Debian's openmpi-bin) not found under /usr"
# Plugins for networks a single-node check does not use, whose libraries (UCX, libfabric, PSM, verbs,
# libnl) would more than double the bundle: left out, so Open MPI never tries them.
skip_plugin='^mca_(atomic_ucx|btl_ofi|btl_openib|mtl_ofi|mtl_psm|mtl_psm2|osc_ucx|pml_ucx|spml_ucx|sshmem_ucx|reachable_netlink)\.so$'

rm -rf "$out"
mkdir -p "$out"/{bin,tests,lib,data/test_corpus,recipes/pretrain,launch}
say "bundling into $out"
cp "${binaries[@]}" "$out/bin/"
cp "${tests[@]}" "$out/tests/"
ompi="$out/openmpi"
mkdir -p "$ompi/bin" "$ompi${ompi_plugins#$ompi_prefix}" "$ompi/share/openmpi" "$ompi/etc"
cp /usr/bin/orterun /usr/bin/orted "$ompi/bin/"
ln -s orterun "$ompi/bin/mpirun"
for p in "$ompi_plugins"/*.so; do
  basename "$p" | grep -Eq "$skip_plugin" || cp "$p" "$ompi${ompi_plugins#$ompi_prefix}/"
done
cp /usr/share/openmpi/*.txt "$ompi/share/openmpi/"
# Our MCA defaults (read through OMPI_MCA_mca_base_param_files, not /etc/openmpi): shared memory and
# TCP on one node, and no warnings about components left out.
cat > "$ompi/etc/openmpi-mca-params.conf" <<'EOF'
# moetrain GPU bundle: one node, ranks talk over shared memory (vader) or loopback TCP.
btl = self,vader,tcp
pml = ob1
mca_base_component_show_load_errors = 0
btl_tcp_if_include = lo
# Containers often forbid the cross-memory attach (ptrace) vader uses for single copies.
btl_vader_single_copy_mechanism = none
oob_tcp_if_include = lo
EOF
pmix="$out/pmix"
mkdir -p "$pmix/lib/pmix" "$pmix/share/pmix"
cp "$pmix_prefix"/lib/pmix/*.so "$pmix/lib/pmix/"
cp "$pmix_prefix"/share/pmix/*.txt "$pmix/share/pmix/"

# Shared libraries: every ELF file of the bundle, resolved as on the target (torch's directories first).
is_provided() {  # by glibc, the driver, or torch's wheels (resolved into $site)
  case "$1" in
    "$site"/*) return 0 ;;
  esac
  case "$(basename "$1")" in
    libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libutil.so.*|libresolv.so.*|ld-linux*|libmvec.so.*) return 0 ;;
    libcuda.so*|libnvidia-*|libnccl.so*|libcudart.so*|libcublas*|libcupti*|libnvToolsExt*|libnvrtc*) return 0 ;;
    libtorch*|libc10*|libgomp.so*|libshm.so) return 0 ;;
  esac
  return 1
}
declare -A bundled=()
missing=()
mapfile -t elves < <(find "$out" -type f \( -perm -u+x -o -name '*.so' -o -name '*.so.*' \) -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print)
for f in "${elves[@]}"; do
  while read -r name arrow path rest; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then missing+=("$(basename "$f"): $name"); continue; fi
    is_provided "$path" && continue
    [ -n "${bundled[$name]:-}" ] && continue
    bundled[$name]=$path
  done < <(LD_LIBRARY_PATH="$torch_path:$ompi_libdir:$pmix_prefix/lib" ldd "$f" 2>/dev/null || true)
done
((${#missing[@]} == 0)) || die "unresolved libraries: ${missing[*]}"
for name in "${!bundled[@]}"; do cp -L "${bundled[$name]}" "$out/lib/$name"; done
chmod u+w "$out"/lib/*

# Test data and recipes: the small corpus (vocabulary 512) and the tiny recipe.
for f in train.bin train.idx valid.bin valid.idx tokenizer.model; do cp "$corpus/$f" "$out/data/test_corpus/"; done
for f in train.domains valid.domains; do [ -f "$corpus/$f" ] && cp "$corpus/$f" "$out/data/test_corpus/"; done
cp "$root/recipes/pretrain/tiny.textproto" "$out/recipes/pretrain/"
cp "$root/launch/gpu-check.sh" "$root/launch/gpu_check.py" "$root/launch/mixtral_bench.py" "$out/launch/"

# The environment every bundled program runs in (gpu-check.sh sources it).
cat > "$out/env.sh" <<'EOF'
# Sourced by launch/gpu-check.sh: the bundle's libraries, then the target Python's torch and nvidia wheels.
# usage: . env.sh PYTHON
bundle=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_py=${1:-python3}
_torch_lib=$("$_py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "env.sh: $_py cannot import torch" >&2; return 1; }
_site=$(dirname "$(dirname "$_torch_lib")")
_path="$bundle/lib:$_torch_lib"
for _d in "$_site"/nvidia/*/lib; do [ -d "$_d" ] && _path="$_path:$_d"; done
# Python itself runs with the system's libraries (MOETRAIN_HOST_LD_LIBRARY_PATH): the bundle's libcrypto
# or libz could be older than what the target's Python modules were linked against.
export MOETRAIN_HOST_LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOETRAIN_BUNDLE_LD_LIBRARY_PATH="$LD_LIBRARY_PATH"
export OPAL_PREFIX="$bundle/openmpi" PMIX_PREFIX="$bundle/pmix"
export PMIX_MCA_mca_base_component_path="$bundle/pmix/lib/pmix"
export OMPI_MCA_mca_base_param_files="$bundle/openmpi/etc/openmpi-mca-params.conf"
export PATH="$bundle/openmpi/bin:$bundle/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset _py _torch_lib _site _path _d
EOF

# Manifest: what was built from what, and the newest glibc symbol version anything bundled needs.
glibc_needed=$(for f in "$out"/bin/* "$out"/tests/* "$out"/lib/* "$ompi"/bin/orte*; do
  objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' ; done | sort -uV | tail -1 | sed 's/GLIBC_//')
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain 2>/dev/null | grep -qv '^??' && echo true || echo false)
"$python" - "$out" "$commit" "$dirty" "$torch_version" "$glibc_needed" "$(ldd --version | head -1)" <<'EOF'
import json, os, sys
out, commit, dirty, torch_version, glibc, host_glibc = sys.argv[1:]
files = {}
for d, _, names in os.walk(out):
    for n in names:
        p = os.path.join(d, n)
        if not os.path.islink(p):
            files[os.path.relpath(p, out)] = os.path.getsize(p)
json.dump({"commit": commit, "tree_dirty": dirty == "true", "torch": torch_version,
           "glibc_needed": glibc, "built_on": host_glibc,
           "libraries": sorted(os.listdir(os.path.join(out, "lib"))),
           "bytes": sum(files.values()), "files": dict(sorted(files.items()))},
          open(os.path.join(out, "MANIFEST.json"), "w"), indent=1)
EOF

size_kib=$(du -sk "$out" | cut -f1)
say "$(ls "$out/lib" | wc -l) libraries: $(ls "$out/lib" | tr '\n' ' ')"
say "needs glibc >= $glibc_needed; torch $torch_version; commit ${commit:0:12}$([ "$dirty" = true ] && echo ' (uncommitted changes in the tree)')"
if ((size_kib > limit_mib * 1024)); then die "bundle is $((size_kib / 1024)) MiB, over the $limit_mib MiB limit"; fi
if ((tar)); then
  tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
  say "tarball $out.tar.gz: $(du -h "$out.tar.gz" | cut -f1)"
fi
say "done: $out ($((size_kib / 1024)) MiB). On the GPU machine: bash $(basename "$out")/launch/gpu-check.sh"
