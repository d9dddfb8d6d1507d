#!/usr/bin/env bash
# moe-data on real files (needs the corpus_small fixture's tokenizer):
#   encode of a JSONL file with a bad line: exit 1, file:line in the message, no shards left behind;
#   a multi-line document encodes and decodes back to the same text (newlines survive);
#   stats --vocab-size below the largest id: exit 1; usage errors (an unknown flag names it and the
#   command's flags): exit 2.
set -u
moe_data=$1 corpus=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

printf '{"text": "fine", "domain": "en"}\n{"txt": "oops"}\n' > "$dir/in.jsonl"
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/in.jsonl" --output-prefix "$dir/out" 2>&1 >/dev/null)
rc=$?
expected="moe-data: error: $dir/in.jsonl:2: expected an object with a string \"text\" field, e.g. {\"text\": \"...\", \"domain\": \"en\"}"
[ "$rc" -eq 1 ] || fail "exit $rc, expected 1: $err"
[ "$err" = "$expected" ] || fail "$(printf 'message:\n%s\nexpected:\n%s' "$err" "$expected")"
[ ! -e "$dir/out.bin" ] && [ ! -e "$dir/out.idx" ] && [ -z "$(ls "$dir" | grep tmp)" ] || fail "partial shards left behind: $(ls "$dir")"

printf 'not json\n' > "$dir/bad.jsonl"
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/bad.jsonl" --output-prefix "$dir/out" 2>&1 >/dev/null)
case "$err" in *"bad.jsonl:1: not valid JSON"*) ;; *) fail "unexpected: $err" ;; esac

printf '{"text": "a", "domain": "two words"}\n' > "$dir/dom.jsonl"
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/dom.jsonl" --output-prefix "$dir/out" 2>&1 >/dev/null)
[ "$err" = "moe-data: error: $dir/dom.jsonl:1: domain \"two words\" must be a non-empty name without spaces" ] || fail "domain: $err"

# Round trip: newlines, tabs, digits, non-Latin text and a character no piece covers (byte fallback).
text=$'Line one\n\tindented 12345\n\nПривет, мир ✓ 🦀'
python3 -c 'import json,sys; print(json.dumps({"text": sys.argv[1], "domain": "x"}))' "$text" > "$dir/ok.jsonl"
printf 'plain file\nsecond line\n' > "$dir/plain.txt"
"$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/ok.jsonl" --input "$dir/plain.txt" \
  --output-prefix "$dir/ok" --domain d >/dev/null || fail "encode failed"
got=$("$moe_data" decode --tokenizer "$corpus/tokenizer.model" --prefix "$dir/ok" --document 0)
[ "$got" = "$text" ] || fail "$(printf 'decoded:\n%s\nexpected:\n%s' "$got" "$text")"
stats=$("$moe_data" stats --prefix "$dir/ok")
case "$stats" in *'"documents":2'*'"d":{"documents":1'*'"x":{"documents":1'*) ;; *) fail "stats: $stats" ;; esac
err=$("$moe_data" stats --prefix "$dir/ok" --vocab-size 3 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 1 ] && case "$err" in *"does not fit --vocab-size 3"*) true ;; *) false ;; esac || fail "stats vocab: $rc $err"

"$moe_data" encode --tokenizer "$corpus/tokenizer.model" >/dev/null 2>&1; rc=$?
[ "$rc" -eq 2 ] || fail "missing --input: exit $rc, expected 2"
# A misspelt flag is a usage error naming it and the command's flags, before any work is done.
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/plain.txt" --output-prefix "$dir/typo" \
  --domian d 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] || fail "unknown flag: exit $rc, expected 2: $err"
first=$(printf '%s\n' "$err" | head -n 1)
[ "$first" = "moe-data: error: unknown flag --domian for encode; valid flags: --tokenizer, --input, --output-prefix, --domain" ] \
  || fail "unknown flag: $first"
[ ! -e "$dir/typo.bin" ] || fail "unknown flag: shards written anyway"
err=$("$moe_data" stats --prefix "$dir/ok" --vocab 3 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] && case "$err" in *"unknown flag --vocab for stats; valid flags: --prefix, --vocab-size"*) true ;; *) false ;; esac \
  || fail "unknown flag (stats): $rc $err"
"$moe_data" frobnicate >/dev/null 2>&1; rc=$?
[ "$rc" -eq 2 ] || fail "unknown command: exit $rc, expected 2"
echo ok
