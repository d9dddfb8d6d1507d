#!/usr/bin/env bash
# libFuzzer runs of moetrain's file readers (tests/fuzz; docs/reliability.md, "Fuzzed parsers").
#
#   launch/fuzz.sh build [TARGET...]      configure and build build-fuzz/ (clang, ASan + UBSan + libFuzzer)
#   launch/fuzz.sh smoke [SECONDS]        every target for SECONDS (default 20) from its corpus
#   launch/fuzz.sh run TARGET ARGS...     one target, extra libFuzzer flags (-runs=1000000, -max_total_time=60)
#   launch/fuzz.sh long [RUNS]            every target for RUNS executions (default 1000000), one after another
#
# Targets: recipe indexed_dataset safetensors manifest sentencepiece hf_config. The repository corpus
# (tests/fuzz/TARGET/corpus) is read, never written: new inputs go to build-fuzz/work/TARGET and a
# finding to build-fuzz/findings/TARGET/ (then the run fails). Keep a fixed finding's input as
# tests/fuzz/TARGET/corpus/regress-<what>.
# Environment: MOETRAIN_FUZZ_NO_BUILD=1 (run the fuzzers as built), MOETRAIN_FUZZ_DIR (default
# ROOT/build-fuzz), MOETRAIN_CACHE (build lock and venv, default ~/.cache/moetrain), MOETRAIN_PYTHON
# (default the venv's python), MOETRAIN_JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MOETRAIN_CACHE:-$HOME/.cache/moetrain}
dir=${MOETRAIN_FUZZ_DIR:-$root/build-fuzz}
python=${MOETRAIN_PYTHON:-${MOETRAIN_VENV:-$cache/venv}/bin/python}
targets=(recipe indexed_dataset safetensors manifest sentencepiece hf_config)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1

# build [TARGET...]: the named fuzzers (default: all of them).
build() {
  [ -n "${MOETRAIN_FUZZ_NO_BUILD:-}" ] && return 0
  local names=() t
  for t in "${@:-${targets[@]}}"; do names+=("${t}_fuzzer"); done
  command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang)"; exit 77; }
  mkdir -p "$cache"
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    flock "$cache/build.lock" env CC=clang CXX=clang++ cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DMOETRAIN_FUZZ=ON -DMOETRAIN_PYTHON="$python" >/dev/null
  fi
  CCACHE_DIR=${CCACHE_DIR:-$cache/ccache} CCACHE_BASEDIR=$root \
    flock "$cache/build.lock" cmake --build "$dir" -j "${MOETRAIN_JOBS:-2}" --target "${names[@]}"
}

# run_target TARGET LIBFUZZER_ARGS...: 0 when the run ends without a finding.
run_target() {
  local t=$1; shift
  mkdir -p "$dir/work/$t" "$dir/findings/$t" "$dir/logs"
  local log="$dir/logs/$t.log" start=$SECONDS
  if "$dir/fuzz/${t}_fuzzer" -artifact_prefix="$dir/findings/$t/" -rss_limit_mb=2048 -timeout=10 -max_len=8192 \
       -print_final_stats=1 "$@" "$dir/work/$t" "$root/tests/fuzz/$t/corpus" >"$log" 2>&1; then
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "$t: ok, ${execs:-?} executions in $((SECONDS - start)) s, corpus $(ls "$dir/work/$t" | wc -l) units (log $log)"
  else
    echo "$t: FINDING after $((SECONDS - start)) s; input in $dir/findings/$t/, log $log:"
    grep -m 5 -E "ERROR|runtime error|SUMMARY|deadly|terminate" "$log" || tail -20 "$log"
    return 1
  fi
}

case "${1:-}" in
  build) shift; build "$@" ;;
  smoke)
    build
    failed=0
    for t in "${targets[@]}"; do run_target "$t" -max_total_time="${2:-20}" || failed=1; done
    exit $failed ;;
  run) t=$2; shift 2; build "$t"; run_target "$t" "$@" ;;
  long)
    build
    failed=0
    for t in "${targets[@]}"; do run_target "$t" -runs="${2:-1000000}" || failed=1; done
    exit $failed ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
