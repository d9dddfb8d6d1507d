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
tool=format
source "$root/launch/cxx_files.sh"  # clang_format, and files: the C++ sources
if (($# > 0)); then files=("$@"); fi
printf '%s\0' "${files[@]}" | xargs -0 "$clang_format" -i --style=file
echo "format: formatted ${#files[@]} files with $("$clang_format" --version)"
