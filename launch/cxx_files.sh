# Sourced by launch/format.sh and launch/format-check.sh (which set `tool` to their name first): sets
# `clang_format` (MOETRAIN_CLANG_FORMAT, default clang-format; exits 2 when it is missing) and `files` to
# the project's C++ sources
# (*.cpp, *.h), relative to the repository root (the current directory): git's tracked files in a clone,
# else every such file outside build*/ (a tree exported with git archive, as launch/fresh-system-check.sh
# makes). Generated files live in build/ and are never listed.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.h')
else
  mapfile -t files < <(find . -path './build*' -prune -o -type f \( -name '*.cpp' -o -name '*.h' \) -print |
    sed 's|^\./||' | LC_ALL=C sort)
fi

clang_format=${MOETRAIN_CLANG_FORMAT:-clang-format}
if ! command -v "$clang_format" >/dev/null; then
  echo "$tool: $clang_format not found; install it with bash launch/setup.sh (or apt-get install clang-format)" >&2
  exit 2
fi
