#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with one NVIDIA GPU, the driver and a Python with the pinned
# torch (cu130), runs every check of issue 12 with the bundle made by launch/gpu-bundle.sh and writes one
# JSON report. At most 8 minutes on one H100/H200.
#
# usage: launch/gpu-check.sh [--bundle DIR] [--out REPORT.json] [--dry-run]
#   --bundle DIR   the bundle (default: the directory this script sits in, when it is a bundle's launch/;
#                  else build/gpu-bundle of the clone)
#   --out FILE     the report (default: gpu-check-report.json in the current directory; dry run:
#                  build/gpu-check-dry-run.json)
#   --dry-run      on the dev machine or CI, no GPU needed: makes the bundle (launch/gpu-bundle.sh), proves
#                  it complete (every bundled binary starts, and the bundled mpirun starts 2 ranks, with only
#                  the bundle and torch on the library path, the system's Open MPI, PMIx, protobuf,
#                  libstdc++ and every other non-glibc library hidden in a private mount namespace), then runs
#                  the whole check plan on the CPU with very few steps. Exit 77 (skip) where no mount
#                  namespace can be made. A checkout that has only been set up is enough: the bundle
#                  script makes the small test corpus (build/test_corpus) when it is missing.
#   PYTHON         the Python with torch (default: python3, then python; dry run: the venv's)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle="" out="" dry=0
while (($#)); do
  case "$1" in
    --bundle) bundle=${2:?--bundle needs a directory}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (usage: launch/gpu-check.sh [--bundle DIR] [--out REPORT.json] [--dry-run])" >&2; exit 2 ;;
  esac
done
say() { printf '[gpu-check] %s\n' "$*"; }
die() { printf '[gpu-check] error: %s\n' "$*" >&2; exit 1; }
t_start=$(date +%s)

if ((dry)); then
  root=$(cd "$here/.." && pwd)
  [ -f "$root/CMakeLists.txt" ] || die "--dry-run runs in a clone (it makes the bundle from build/)"
  venv=${MOETRAIN_VENV:-${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/venv}
  python=${PYTHON:-$venv/bin/python}
  bundle=${bundle:-$root/build/gpu-bundle-dry-run}
  out=${out:-$root/build/gpu-check-dry-run.json}
  if unshare -m true 2>/dev/null; then ns=(unshare -m)
  elif unshare -m --map-root-user true 2>/dev/null; then ns=(unshare -m --map-root-user)
  else echo "SKIP: cannot make a mount namespace here (needs root or user namespaces)"; exit 77
  fi
  MOETRAIN_VENV=$venv bash "$here/gpu-bundle.sh" "$bundle"
else
  if [ -z "$bundle" ]; then
    if [ -f "$here/../env.sh" ]; then bundle=$(cd "$here/.." && pwd)
    else bundle=$(cd "$here/.." && pwd)/build/gpu-bundle; fi
  fi
  out=${out:-$PWD/gpu-check-report.json}
  python=${PYTHON:-$(command -v python3 || command -v python || true)}
fi
[ -f "$bundle/env.sh" ] || die "$bundle is not a bundle (no env.sh): make one with launch/gpu-bundle.sh"
bundle=$(cd "$bundle" && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
[ -n "$python" ] && "$python" -c 'import torch' 2>/dev/null || die "no Python with torch (${python:-none found}); set PYTHON=/path/to/python"
if ((!dry)) && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "warning: torch sees no GPU here (torch.cuda.is_available() is false): the checks will fail; --dry-run is the check without one"
fi
say "bundle $bundle; python $python (torch $("$python" -c 'import torch; print(torch.__version__)'))"

# The bundle needs this glibc or newer (its libraries come from Debian 12).
need=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["glibc_needed"])' "$bundle/MANIFEST.json")
have=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  die "this system's glibc is $have; the bundle needs $need or newer (docs/gpu.md, 'Requirements')"
fi

# shellcheck source=/dev/null
. "$bundle/env.sh" "$python"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

proof_args=()
if ((dry)); then
  # Proof of completeness, in a private mount namespace where /usr/lib/x86_64-linux-gnu holds glibc's
  # files only (every other system library, Open MPI's and PMIx's plugins included, is gone), Open MPI's
  # and PMIx's data and configuration directories are empty and the CUDA toolkit is hidden. Inside it
  # only bash builtins and the bundle's programs run (bash itself stays loaded).
  proof_dir=$(mktemp -d "${TMPDIR:-/tmp}/moetrain-gpu-proof.XXXXXX")
  trap 'rm -rf "$proof_dir"' EXIT
  libdir=/usr/lib/x86_64-linux-gnu
  mkdir -p "$proof_dir/glibc" "$proof_dir/logs" "$proof_dir/empty" "$proof_dir/runs"
  dpkg -L libc6 | grep -E "^(/usr)?/lib/x86_64-linux-gnu/[^/]+$" | while read -r f; do
    cp -a "$libdir/$(basename "$f")" "$proof_dir/glibc/"
  done
  mapfile -t elves < <(cd "$bundle" && find . -type f \( -perm -u+x -o -name '*.so' -o -name '*.so.*' \) \
    -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print | sed 's|^\./||' | sort)
  corpus="$bundle/data/test_corpus"
  "${ns[@]}" bash -c '
    set -uo pipefail
    proof=$1 bundle=$2 corpus=$3; shift 3
    for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi \
             /usr/local/cuda /usr/local/cuda-*; do
      [ -d "$d" ] && [ ! -L "$d" ] && mount --bind "$proof/empty" "$d"
    done
    mount --bind "$proof/glibc" /usr/lib/x86_64-linux-gnu || { echo "cannot hide the system libraries"; exit 3; }
    cd "$bundle"
    i=0
    for f in "$@"; do  # every ELF file resolves with only the bundle, torch and glibc
      i=$((i + 1))
      /lib64/ld-linux-x86-64.so.2 --list "$f" > "$proof/logs/ldd.$i" 2>&1; echo "$? $f" >> "$proof/logs/ldd.index"
    done
    start() { local name=$1; shift; "$@" > "$proof/logs/$name.out" 2>&1; echo "$name $?" >> "$proof/logs/starts"; }
    start moe-train-help bin/moe-train --help
    start moe-bench-tiny bin/moe-bench moe-layer --tokens 64 --d-model 16 --experts 4 --top-k 2 --hidden 16 --warmup 0 --iters 1
    start gpu_test-list tests/gpu_test --gtest_list_tests
    start gpu_test-cpu-cases tests/gpu_test --gtest_filter=CudaSyncDebugEnv.*
    start mpirun-version openmpi/bin/mpirun --version
    start mpirun-np2-multirank_test openmpi/bin/mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
      -x LD_LIBRARY_PATH tests/multirank_test --gtest_color=no --gtest_filter=MpiStaging.*:*Collectives.*
    start mpirun-np2-moe-train openmpi/bin/mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
      -x LD_LIBRARY_PATH -x OMP_NUM_THREADS bin/moe-train --recipe recipes/pretrain/tiny.textproto --run-dir "$proof/runs/ep2" \
      --set data.train_prefix=$corpus/train --set data.valid_prefix=$corpus/valid --set data.tokenizer=$corpus/tokenizer.model \
      --set model.vocab_size=512 --set model.d_model=64 --set model.num_layers=2 --set model.ffn_hidden=128 \
      --set model.moe_ffn_hidden=64 --set train.micro_batch_size=4 --set data.seq_len=32 --set train.steps=2 \
      --set train.eval_interval=0 --set train.eval_sequences=4 --set checkpoint.interval=0 \
      --set checkpoint.save_final=false --set parallel.expert=2 --set train.threads=1
    exit 0
  ' _ "$proof_dir" "$bundle" "$corpus" "${elves[@]}" || die "the mount namespace could not be set up"
  torch_site=$(LD_LIBRARY_PATH=$MOETRAIN_HOST_LD_LIBRARY_PATH "$python" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  # A failed proof fails the report (its "pass" needs the proof's), after the plan has run.
  LD_LIBRARY_PATH=$MOETRAIN_HOST_LD_LIBRARY_PATH "$python" - "$proof_dir" "$bundle" "$torch_site" "$proof_dir/proof.json" <<'EOF' || true
import json, os, re, sys
proof, bundle, site, out = sys.argv[1:]
logs = os.path.join(proof, "logs")
glibc = "/usr/lib/x86_64-linux-gnu/"  # inside the namespace: glibc's files only
bad, files = [], 0
for i, line in enumerate(open(os.path.join(logs, "ldd.index")), 1):
    rc, name = line.split(" ", 1)
    name = name.strip()
    files += 1
    text = open(os.path.join(logs, f"ldd.{i}")).read()
    if rc != "0" or "not found" in text:
        bad.append(f"{name}: {text.strip()[-300:]}")
        continue
    for m in re.finditer(r"=> (\S+)", text):
        p = os.path.realpath(m.group(1)) if not m.group(1).startswith(glibc) else m.group(1)
        if not (p.startswith(bundle + "/") or p.startswith(site + "/") or p.startswith(glibc) or p.startswith("/lib64/")):
            bad.append(f"{name}: {m.group(1)} is outside the bundle, torch and glibc")
starts = {}
for line in open(os.path.join(logs, "starts")):
    name, rc = line.split()
    text = open(os.path.join(logs, name + ".out"), errors="replace").read()
    ok = rc == "0"
    if name == "mpirun-np2-multirank_test":
        ok = ok and "[  PASSED  ]" in text and "[  FAILED  ]" not in text  # rc: any rank's failure
    if name == "mpirun-np2-moe-train":
        ok = ok and os.path.exists(os.path.join(proof, "runs/ep2/metrics.jsonl"))
    starts[name] = {"ok": ok, "rc": int(rc), **({} if ok else {"output": text[-1500:]})}
result = {"pass": not bad and all(s["ok"] for s in starts.values()), "elf_files_resolved": files,
          "unresolved_or_outside": bad, "starts": starts,
          "hidden": "/usr/lib/x86_64-linux-gnu replaced by glibc's files only; Open MPI, PMIx, /etc/openmpi, "
                    "/usr/share/openmpi and the CUDA toolkit emptied (private mount namespace)"}
json.dump(result, open(out, "w"), indent=1)
for name, s in starts.items():
    print(f"[gpu-check] bundle proof: {name}: {'ok' if s['ok'] else 'FAIL'}")
print(f"[gpu-check] bundle proof: {files} ELF files resolve with only the bundle, torch and glibc" if not bad else
      "[gpu-check] bundle proof: FAIL:\n  " + "\n  ".join(bad[:20]))
sys.exit(0 if result["pass"] else 1)
EOF
  proof_args=(--proof "$proof_dir/proof.json")
fi

if ((dry)); then
  # Stale results of an "earlier run", planted where the plan used to read them: the plan must remove
  # them first and never read them (its plan_self_test check proves it).
  work="$(dirname "$out")/gpu-check-runs"
  mkdir -p "$work"
  printf '%s\n' '{"testsuites": [{"name": "Stale", "testsuite": [{"name": "FromAnEarlierRun", "result": "COMPLETED"}]}]}' \
    > "$work/gpu_test.json"
  printf '%s\n' '{"pass": true, "stale": true, "checks": {}}' > "$out"
  export MOETRAIN_GPU_CHECK_STALE="$work/gpu_test.json:$out"
fi

budget=$((480 - ($(date +%s) - t_start)))
rc=0
# Each check has its own cap inside the plan; this one bounds the whole plan (a hang in the plan itself):
# the report keeps every check written before it.
LD_LIBRARY_PATH=$MOETRAIN_HOST_LD_LIBRARY_PATH timeout -k 10 $((budget + 60)) "$python" "$bundle/launch/gpu_check.py" \
  --bundle "$bundle" --out "$out" --budget-s "$budget" "${proof_args[@]}" $( ((dry)) && echo --dry-run) || rc=$?
((rc == 124)) && say "the plan ran past its budget and was stopped; the report holds the checks it finished"
if ((dry)) && [ -f "$out" ]; then
  # The summary the report ends with: every check and sub-check, its status and figures.
  "$python" -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r.get("summary") and not r.get("stale") else 1)' "$out" \
    || { say "error: the report has no summary (or is the stale one)"; rc=1; }
fi
say "report: $out ($(( $(date +%s) - t_start )) s in all)"
exit $rc
