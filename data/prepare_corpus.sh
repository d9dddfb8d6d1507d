#!/usr/bin/env bash
# Builds the multi-domain training corpus from Debian packages into OUT_DIR:
#   OUT_DIR/{train,valid}.jsonl          the text, one {"text", "domain"} per line
#   OUT_DIR/tokenizer.model              SentencePiece BPE (vocab 4096; 512 with --small)
#   OUT_DIR/{train,valid}.{bin,idx,domains}   token shards (Megatron indexed dataset + domain sidecar)
#   OUT_DIR/sources.json                 the versions of the packages the text came from
#   OUT_DIR/corpus.sha256                SHA-256 of the text, tokenizer and shard files (sha256sum format);
#                                        the corpus checksum printed at the end is the SHA-256 of this file
# The text comes only from what launch/setup.sh installs (Debian's fortune packages and the pinned torch
# wheel of the venv), so every machine makes a byte-identical corpus (data/assemble_corpus.py says why).
# Idempotent: does nothing when OUT_DIR/.done holds the hash of this script, assemble_corpus.py, the
# moe-data binary and the options. Uses $MOETRAIN_BIN/moe-data (default: build/bin of this checkout) and
# the torch package of $MOETRAIN_PYTHON (default: the python of setup's venv).
# usage: data/prepare_corpus.sh OUT_DIR [--small]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: data/prepare_corpus.sh OUT_DIR [--small]}
shift
small=""; vocab=4096
for arg in "$@"; do
  case "$arg" in
    --small) small="--small"; vocab=512 ;;
    *) echo "prepare_corpus: unknown option $arg" >&2; exit 2 ;;
  esac
done
bin=${MOETRAIN_BIN:-$root/build/bin}
bin=$(cd "$bin" 2>/dev/null && pwd || echo "$bin")
[ -x "$bin/moe-data" ] || { echo "prepare_corpus: $bin/moe-data not found; build it (cmake --build build --target moe-data) or set MOETRAIN_BIN" >&2; exit 1; }
python=${MOETRAIN_PYTHON:-${MOETRAIN_VENV:-${MOETRAIN_CACHE:-$HOME/.cache/moetrain}/venv}/bin/python}
torch_dir=$("$python" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torch').origin))" 2>/dev/null) ||
  { echo "prepare_corpus: $python has no torch package (the C and Python domains are read from it); run launch/setup.sh or set MOETRAIN_PYTHON" >&2; exit 1; }
start=$SECONDS
stamp=$(cat "$root/data/prepare_corpus.sh" "$root/data/assemble_corpus.py" "$bin/moe-data" "$torch_dir/version.py" | sha256sum | cut -c1-16)-$vocab
checksum() { sha256sum "$out/corpus.sha256" | cut -c1-64; }
if [ "$(cat "$out/.done" 2>/dev/null)" = "$stamp" ]; then
  echo "[corpus] $out is up to date; corpus sha256 $(checksum)"
  exit 0
fi
mkdir -p "$out"
rm -f "$out/.done"
echo "[corpus] assembling text into $out"
python3 "$root/data/assemble_corpus.py" "$out" --torch "$torch_dir" $small
echo "[corpus] training tokenizer (vocab $vocab)"
# From inside OUT_DIR with relative names: the model records its input and prefix paths, and must not
# depend on where the corpus is made.
(cd "$out" && "$bin/moe-data" train-tokenizer --input train.jsonl --vocab-size "$vocab" --model-prefix tokenizer >/dev/null)
echo "[corpus] encoding"
"$bin/moe-data" encode --tokenizer "$out/tokenizer.model" --input "$out/train.jsonl" --output-prefix "$out/train"
"$bin/moe-data" encode --tokenizer "$out/tokenizer.model" --input "$out/valid.jsonl" --output-prefix "$out/valid"
echo "[corpus] unigram baseline: $("$bin/moe-data" unigram --train "$out/train" --valid "$out/valid" --vocab-size "$vocab")"
(cd "$out" && sha256sum train.jsonl valid.jsonl tokenizer.model tokenizer.vocab \
  train.bin train.idx train.domains valid.bin valid.idx valid.domains > corpus.sha256)
echo "[corpus] corpus sha256 $(checksum) (of $out/corpus.sha256, which lists every file's)"
echo "$stamp" > "$out/.done"
echo "[corpus] done in $((SECONDS - start)) s"
