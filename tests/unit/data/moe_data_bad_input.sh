#!/usr/bin/env bash
# moe-data encode on a JSONL file with a bad second line: exit 1, file:line in the message, no shards.
set -u
moe_data=$1 corpus=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '{"text": "fine", "domain": "en"}\n{"txt": "oops"}\n' > "$dir/in.jsonl"
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/in.jsonl" --output-prefix "$dir/out" 2>&1 >/dev/null)
rc=$?
expected="moe-data: error: $dir/in.jsonl:2: expected an object with a string \"text\" field, e.g. {\"text\": \"...\", \"domain\": \"en\"}"
[ "$rc" -eq 1 ] || { echo "exit $rc, expected 1: $err"; exit 1; }
[ "$err" = "$expected" ] || { printf 'message:\n%s\nexpected:\n%s\n' "$err" "$expected"; exit 1; }
[ ! -e "$dir/out.bin" ] && [ ! -e "$dir/out.idx" ] || { echo "partial shards left behind"; exit 1; }
printf 'not json\n' > "$dir/bad.jsonl"
err=$("$moe_data" encode --tokenizer "$corpus/tokenizer.model" --input "$dir/bad.jsonl" --output-prefix "$dir/out" 2>&1 >/dev/null)
case "$err" in *"bad.jsonl:1: not valid JSON"*) ;; *) echo "unexpected: $err"; exit 1 ;; esac
echo ok
