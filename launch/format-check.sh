#!/usr/bin/env bash
# Checks that every tracked C++ file (*.cpp, *.h) is formatted as .clang-format says, changing nothing.
# Exits 0 when all are, 1 naming the files that are not and the command that fixes them
# (bash launch/format.sh), 2 when clang-format is missing.
#   MOETRAIN_CLANG_FORMAT   the clang-format to run (default: clang-format, Debian 12's 14, installed by
#                           launch/setup.sh); other versions may format differently
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tool=format-check
source "$root/launch/cxx_files.sh"  # clang_format, and files: the same C++ sources as launch/format.sh
unformatted=()
for f in "${files[@]}"; do
  "$clang_format" --dry-run -Werror --style=file "$f" >/dev/null 2>&1 || unformatted+=("$f")
done
if ((${#unformatted[@]})); then
  echo "format-check: ${#unformatted[@]} of ${#files[@]} C++ files are not formatted as .clang-format says:" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  echo "format-check: fix them with: bash launch/format.sh (or bash launch/format.sh FILE... for some)" >&2
  echo "format-check: what would change: $clang_format --style=file FILE | diff FILE -" >&2
  exit 1
fi
echo "format-check: all ${#files[@]} C++ files are formatted ($("$clang_format" --version))"
