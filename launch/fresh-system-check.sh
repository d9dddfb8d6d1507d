#!/usr/bin/env bash
# Runs the README's two commands on a brand-new, minimal Debian 12 system, as a new user would.
#
# Builds a Debian 12 (bookworm) root with debootstrap (--variant=minbase), adds only what a user brings
# (the compiler toolchain, CMake, Python, and this machine's CUDA toolkit under /usr/local/cuda, mounted
# read-only), copies the committed tree of this clone (HEAD) into it, and inside it runs
#   bash launch/test.sh         (README command 2: setup.sh installs the rest, then CTest)
#   bash launch/quickstart.sh   (README command 1)
# with empty caches. Prints the corpus checksums made inside the root next to this machine's, and a summary
# with the times. Everything else the root needs is what the machine itself needs to reach the package
# servers: its apt mirror (read from /etc/apt/sources.list{,.d}), its CA certificates and pip settings
# (/etc/pip.conf, PIP_* variables except PIP_FIND_LINKS, a local wheel folder of this machine) and
# /etc/hosts (torchrun's rendezvous resolves the host name).
#
# usage: sudo launch/fresh-system-check.sh [--root DIR] [--share-ccache] [--skip-quickstart] [--keep]
#   --root DIR          where to build the root (default: /var/tmp/moetrain-fresh-root; emptied first)
#   --share-ccache      mount this machine's compiler cache (${MOETRAIN_CACHE:-~/.cache/moetrain}/ccache) in
#                       the root: same compiler and headers, so the first build takes minutes instead of most
#                       of an hour; everything else (packages, venv, corpus, tests) stays fresh
#   --skip-quickstart   run only the test command
#   --keep              leave the root in place afterwards (it is unmounted either way)
# Needs root, debootstrap (installed when missing) and about 15 GB of disk. Takes about 45 minutes on
# 2 cores: the Python packages and the first build dominate.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root_dir=/var/tmp/moetrain-fresh-root
quickstart=1
keep=0
share_ccache=0
while (($#)); do
  case "$1" in
    --root) root_dir=${2:?--root needs a directory}; shift 2 ;;
    --skip-quickstart) quickstart=0; shift ;;
    --keep) keep=1; shift ;;
    --share-ccache) share_ccache=1; shift ;;
    *) echo "fresh-system-check: unknown option $1 (options: --root DIR, --share-ccache, --skip-quickstart, --keep)" >&2; exit 2 ;;
  esac
done
say() { printf '[fresh-system] %s\n' "$*"; }
die() { printf 'fresh-system-check: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts); run it with sudo"
[ -d /usr/local/cuda ] || say "no /usr/local/cuda on this machine: the root is checked without a CUDA toolkit"

# The Debian mirror and security mirror this machine's apt uses (one-line and deb822 sources).
apt_uris() {  # prints "URI SUITE" for every Debian source line
  cat /etc/apt/sources.list 2>/dev/null | awk '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; s = ($2 ~ /^\[/) ? $4 : $3; print u, s }'
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { uris = ""; suites = ""; deb = 0
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Types:.*deb( |$)/) deb = 1
             if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
             if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) } }
           if (deb) { n = split(uris, U, " "); m = split(suites, S, " ")
                      for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print U[a], S[b] } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && awk '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; s = ($2 ~ /^\[/) ? $4 : $3; print u, s }' "$f"
  done
  return 0
}
mirror=$(apt_uris | awk '$2 == "bookworm" { print $1; exit }')
security=$(apt_uris | awk '$2 == "bookworm-security" { print $1; exit }')
[ -n "$mirror" ] || die "no Debian 12 (bookworm) source in /etc/apt/sources.list{,.d}; this check needs this machine's Debian mirror"
say "Debian mirror: $mirror; security: ${security:-none}"

command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

mounts=()
# Removes the root, but never while anything is mounted under it: the CUDA toolkit and the compiler cache
# are bind mounts of this machine's own directories, on the same file system.
remove_root() {
  grep -o " $root_dir/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  if grep -q " $root_dir/" /proc/mounts; then
    echo "fresh-system-check: mounts remain under $root_dir; not removing it" >&2; return 1
  fi
  rm -rf --one-file-system "$root_dir"
}
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  if [ "$keep" -eq 0 ] && [ -d "$root_dir" ]; then remove_root; fi
}
trap cleanup EXIT
bind() {  # bind SRC DEST [ro]
  mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2")
  [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}

t0=$SECONDS
# A root left behind by an interrupted run may still have mounts under it.
if [ -d "$root_dir" ]; then remove_root || exit 1; fi
say "debootstrap bookworm (minbase) into $root_dir"
debootstrap --variant=minbase bookworm "$root_dir" "$mirror" > "$root_dir.debootstrap.log" 2>&1 ||
  die "debootstrap failed; see $root_dir.debootstrap.log"
{
  echo "deb $mirror bookworm main"
  echo "deb $mirror bookworm-updates main"
  [ -z "$security" ] || echo "deb $security bookworm-security main"
} > "$root_dir/etc/apt/sources.list"
# What the machine needs to reach its package servers, nothing of its build setup.
cp /etc/resolv.conf /etc/hosts "$root_dir/etc/"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root_dir/etc/pip.conf"
t_bootstrap=$((SECONDS - t0))

bind /proc "$root_dir/proc"
bind /sys "$root_dir/sys"
bind /dev "$root_dir/dev"
bind /dev/pts "$root_dir/dev/pts"
mkdir -p "$root_dir/dev/shm"; mount -t tmpfs shm "$root_dir/dev/shm"; mounts+=("$root_dir/dev/shm")
[ ! -d /usr/local/cuda ] || bind "$(readlink -f /usr/local/cuda)" "$root_dir/usr/local/cuda" ro
if [ "$share_ccache" -eq 1 ]; then
  host_ccache=${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/ccache
  mkdir -p "$host_ccache"
  bind "$host_ccache" "$root_dir/root/.cache/moetrain/ccache"
  say "sharing this machine's compiler cache $host_ccache"
fi

in_root() { chroot "$root_dir" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 TERM=dumb $(env | grep -E '^PIP_[A-Z_]+=' | grep -v '^PIP_FIND_LINKS=' | tr '\n' ' ') bash -c "$1"; }

t1=$SECONDS
say "adding the toolchain, CMake and Python (what a user has before the README)"
in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  build-essential cmake python3 ca-certificates >/dev/null"
# This machine's CA certificates, as pip on this machine uses them (its package servers may need them):
# the local ones are added where update-ca-certificates finds them, so a later run of it keeps them.
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  cp -r /usr/local/share/ca-certificates/. "$root_dir/usr/local/share/ca-certificates/"
  in_root "update-ca-certificates >/dev/null"
fi
cp /etc/ssl/certs/ca-certificates.crt "$root_dir/etc/ssl/certs/ca-certificates.crt"
t_tools=$((SECONDS - t1))

say "copying the committed tree of $src (HEAD $(git -C "$src" rev-parse --short HEAD))"
mkdir -p "$root_dir/work/moetrain"
git -C "$src" archive HEAD | tar -x -C "$root_dir/work/moetrain"

# run_readme_command SCRIPT LOG: runs `bash launch/SCRIPT` in the root, shows and logs its output; sets
# rc (its exit status) and took (seconds).
run_readme_command() {
  local start=$SECONDS
  set +e
  in_root "cd /work/moetrain && bash launch/$1" 2>&1 | tee "$2"
  rc=${PIPESTATUS[0]}
  set -e
  took=$((SECONDS - start))
}

say "README command 2: bash launch/test.sh"
run_readme_command test.sh "$root_dir.test.log"
test_rc=$rc t_test=$took

qs_rc=skipped; t_qs=0
if [ "$quickstart" -eq 1 ] && [ "$test_rc" -eq 0 ]; then
  say "README command 1: bash launch/quickstart.sh"
  run_readme_command quickstart.sh "$root_dir.quickstart.log"
  qs_rc=$rc t_qs=$took
fi

checksum() { [ -f "$1/corpus.sha256" ] && sha256sum "$1/corpus.sha256" | cut -c1-64 || echo "(none)"; }
say "summary"
echo "  compiler cache               $([ "$share_ccache" -eq 1 ] && echo "this machine's (--share-ccache)" || echo empty)"
echo "  debootstrap                  $((t_bootstrap / 60)) min $((t_bootstrap % 60)) s"
echo "  toolchain, CMake, Python     $((t_tools / 60)) min $((t_tools % 60)) s"
echo "  bash launch/test.sh          exit $test_rc, $((t_test / 60)) min $((t_test % 60)) s (log: $root_dir.test.log)"
echo "  bash launch/quickstart.sh    exit $qs_rc, $((t_qs / 60)) min $((t_qs % 60)) s"
echo "  test corpus checksum         fresh root $(checksum "$root_dir/work/moetrain/build/test_corpus")"
echo "                               this clone $(checksum "$src/build/test_corpus")"
if [ "$qs_rc" != skipped ]; then
  echo "  quickstart corpus checksum   fresh root $(checksum "$root_dir/work/moetrain/corpus")"
  echo "                               this clone $(checksum "$src/corpus")"
  grep -E '^(final:|unigram baseline)' "$root_dir.quickstart.log" | sed 's/^/  /' || true
fi
[ "$test_rc" -eq 0 ] && { [ "$qs_rc" = skipped ] || [ "$qs_rc" -eq 0 ]; }
