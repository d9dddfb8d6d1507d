#!/usr/bin/env bash
# Formats every tracked C++ file (*.cpp, *.h) in place with clang-format and the repository's
# .clang-format. launch/format-check.sh checks the same files without changing them.
#   bash launch/format.sh            all tracked C++ files
#   bash launch/format.sh FILE...    only these files
#   MOETRAIN_CLANG_FORMAT            the clang-format to run (default: clang-format, Debian 12's 14,
#                                    installed by launch/setup.sh); other versions may format differently
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
clang_format=${MOETRAIN_CLANG_FORMAT:-clang-format}
if ! command -v "$clang_format" >/dev/null; then
  echo "format: $clang_format not found; install it with bash launch/setup.sh (or apt-get install clang-format)" >&2
  exit 2
fi
# Generated and third-party files would be excluded here; none is tracked today (recipe.pb.h and
# event.pb.h are generated into build/).
if (($# > 0)); then
  files=("$@")
else
  source "$root/launch/cxx_files.sh"
fi
printf '%s\0' "${files[@]}" | xargs -0 "$clang_format" -i --style=file
echo "format: formatted ${#files[@]} files with $("$clang_format" --version)"
