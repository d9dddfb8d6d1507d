#!/usr/bin/env bash
# Builds the multi-domain training corpus from Debian packages into OUT_DIR:
#   OUT_DIR/{train,valid}.jsonl          the text, one {"text", "domain"} per line
#   OUT_DIR/tokenizer.model              SentencePiece BPE (vocab 4096; 512 with --small)
#   OUT_DIR/{train,valid}.{bin,idx,domains}   token shards (Megatron indexed dataset + domain sidecar)
# Idempotent: does nothing when OUT_DIR/.done holds the hash of this script, assemble_corpus.py, the
# moe-data binary and the options. Uses $MOETRAIN_BIN/moe-data (default: build/bin of this checkout).
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
[ -x "$bin/moe-data" ] || { echo "prepare_corpus: $bin/moe-data not found; build it (cmake --build build --target moe-data) or set MOETRAIN_BIN" >&2; exit 1; }
start=$SECONDS
stamp=$(cat "$root/data/prepare_corpus.sh" "$root/data/assemble_corpus.py" "$bin/moe-data" | sha256sum | cut -c1-16)-$vocab
if [ "$(cat "$out/.done" 2>/dev/null)" = "$stamp" ]; then
  echo "[corpus] $out is up to date"
  exit 0
fi
mkdir -p "$out"
rm -f "$out/.done"
echo "[corpus] assembling text into $out"
python3 "$root/data/assemble_corpus.py" "$out" $small
echo "[corpus] training tokenizer (vocab $vocab)"
"$bin/moe-data" train-tokenizer --input "$out/train.jsonl" --vocab-size "$vocab" --model-prefix "$out/tokenizer" >/dev/null
echo "[corpus] encoding"
"$bin/moe-data" encode --tokenizer "$out/tokenizer.model" --input "$out/train.jsonl" --output-prefix "$out/train"
"$bin/moe-data" encode --tokenizer "$out/tokenizer.model" --input "$out/valid.jsonl" --output-prefix "$out/valid"
echo "[corpus] unigram baseline: $("$bin/moe-data" unigram --train "$out/train" --valid "$out/valid" --vocab-size "$vocab")"
echo "$stamp" > "$out/.done"
echo "[corpus] done in $((SECONDS - start)) s"
