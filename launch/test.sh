#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite through CTest.
# Extra arguments go to ctest (for example -R recipe or -L unit).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
cd "$root/build"
ctest --output-on-failure --timeout 900 -j "${MOETRAIN_JOBS:-2}" "$@"
