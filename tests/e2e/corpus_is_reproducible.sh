#!/usr/bin/env bash
# The small corpus made again in another folder is byte-identical to the test corpus: the text comes only
# from files setup installs, SentencePiece samples with a fixed seed, and the tokenizer is trained with
# relative paths (a model records its input and prefix paths). Fails without any of the three.
# usage: corpus_is_reproducible.sh SOURCE_DIR TEST_CORPUS SCRATCH_DIR
set -euo pipefail
src=$1 corpus=$2 scratch=$3
rm -rf "$scratch"
bash "$src/data/prepare_corpus.sh" "$scratch/another/place" --small >/dev/null
if ! diff "$corpus/corpus.sha256" "$scratch/another/place/corpus.sha256"; then
  echo "FAIL: the corpus made in $scratch/another/place differs from $corpus (files above)"; exit 1
fi
echo "ok: corpus sha256 $(sha256sum "$corpus/corpus.sha256" | cut -c1-64) in both places"
