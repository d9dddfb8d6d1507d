#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of moetrain in build-sanitize/, then the unit and
# multi-rank tests under it (docs/reliability.md, "Sanitizers").
#
#   launch/sanitize.sh                 build everything the tests use, run ctest -L unit, then -L multirank
#                                      without LeakSanitizer (Open MPI's exit-time allocations)
#   launch/sanitize.sh -L unit         other ctest arguments replace the default selection
#   MOETRAIN_SANITIZE_BUILD_ONLY=1     build only
#
# Findings fail the test that hit them: UBSan halts on the first error, ASan on any memory error, LSan
# on a leak at exit. Suppressions (launch/sanitize.supp) cover third-party libraries only, each with
# its reason. The build takes the shared build lock one target at a time, so other builds interleave.
# Environment: MOETRAIN_CACHE (default ~/.cache/moetrain: lock, venv, ccache), MOETRAIN_SANITIZE_DIR
# (default ROOT/build-sanitize), MOETRAIN_JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MOETRAIN_CACHE:-$HOME/.cache/moetrain}
dir=${MOETRAIN_SANITIZE_DIR:-$root/build-sanitize}
python=${MOETRAIN_PYTHON:-${MOETRAIN_VENV:-$cache/venv}/bin/python}
supp="$root/launch/sanitize.supp"
# Also during the build: gtest_discover_tests runs each test binary to list its tests.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp"
# Open MPI's components stay loaded at exit, so the leaks it leaves there have module names to suppress.
export OMPI_MCA_mca_base_component_disable_dlclose=1
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache} CCACHE_BASEDIR=$root
flags="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
start=$SECONDS

if [ ! -f "$dir/CMakeCache.txt" ]; then
  flock "$cache/build.lock" cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOETRAIN_PYTHON="$python" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
fi
# The libraries first, then each executable the labelled tests run; one lock hold per target.
targets=(moetrain_config moetrain_core moetrain_io moetrain_data moetrain_parallel moetrain_trainer moetrain_hf)
targets+=($(cmake --build "$dir" --target help | sed -n 's/^\.\.\. \(.*_test\|moe-[a-z]*\|fuzz_replay_[a-z_]*\)$/\1/p' | sort))
for t in "${targets[@]}"; do
  echo "[sanitize] building $t ($((SECONDS - start)) s)"
  flock "$cache/build.lock" cmake --build "$dir" -j "${MOETRAIN_JOBS:-2}" --target "$t" >"$dir/build-$t.log" 2>&1 ||
    { tail -30 "$dir/build-$t.log"; exit 1; }
done
echo "[sanitize] build done in $((SECONDS - start)) s"
[ -n "${MOETRAIN_SANITIZE_BUILD_ONLY:-}" ] && exit 0

test_start=$SECONDS
cd "$dir"
status=0
if [ $# -gt 0 ]; then
  ctest --output-on-failure --timeout 3600 "$@" || status=$?
else
  # Unit tests with every sanitizer, LeakSanitizer included. Multi-rank tests with ASan and UBSan but
  # without LeakSanitizer: at exit Open MPI leaves ~120 kB of its own allocations in every rank, many from
  # MCA components it has already unloaded, whose frames cannot be named for a suppression (sanitize.supp).
  ctest --output-on-failure --timeout 3600 -L unit || status=$?
  ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" ctest --output-on-failure --timeout 3600 -L multirank || status=$?
fi
echo "[sanitize] ctest: exit $status in $((SECONDS - test_start)) s (build and tests $((SECONDS - start)) s)"
exit $status
