#!/usr/bin/env python3
"""Token shards with a Hugging Face model's own tokenizer (docs/data.md, "Shards with a Hugging Face tokenizer").

    python data/tools/encode_hf.py --hf-tokenizer DIR --input FILE [--input FILE]... --output-prefix PREFIX
                                   [--domain NAME] [--eod-token TOKEN]

The same inputs, shards and sidecar as `moe-data encode` (data/tools/moe_data_main.cpp), with the ids of
`transformers.AutoTokenizer.from_pretrained(DIR)` instead of a SentencePiece model:
- DIR holds tokenizer.json (byte-level BPE, as Qwen2, Qwen3 and OLMoE ship it) and usually tokenizer_config.json.
- Each document is `AutoTokenizer(DIR)(text)["input_ids"]` (the tokenizer's own special tokens, if its
  post-processor adds any) followed by the end-of-document id: --eod-token, default the tokenizer's eos_token.
- *.jsonl inputs hold one {"text": ..., "domain": ...} per line (blank lines skipped); any other file is one
  plain-text (UTF-8) document. A bad line is an error naming file:line; no shard is left behind.
- PREFIX.bin/.idx: Megatron's MMIDIDX version 1, uint16 below 65500 vocabulary entries else int32, one
  sequence per document; PREFIX.domains: "moetrain-domains 1" then one domain per document.
Prints one line of JSON. Exit codes: 0 success, 1 runtime error, 2 usage error.

Data preparation only: Python never runs on the training path. The tokenizer runs through transformers,
which runs the Rust `tokenizers` library: the ids are AutoTokenizer's by construction.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

BATCH_DOCUMENTS = 256  # documents tokenized per call (the Rust tokenizer encodes a batch in parallel)
MAGIC = b"MMIDIDX\x00\x00"
UINT16_CODE, INT32_CODE = 8, 4


class InputError(Exception):
    """Bad input or environment: printed as `encode_hf: error: ...`, exit code 1."""


# ---- inputs: the rules of moe-data encode ----

def valid_domain(name):
    return isinstance(name, str) and name != "" and not any(c in name for c in " \t\r\n")


def documents(inputs, default_domain):
    """Yields (text, domain) for every document of every input, in order."""
    for path in inputs:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise InputError(f"{path}: cannot open input file ({e.strerror})")
        with f:
            if not path.endswith(".jsonl"):
                data = f.read()
                try:
                    yield data.decode("utf-8"), default_domain
                except UnicodeDecodeError as e:
                    raise InputError(f"{path}: not valid UTF-8 at byte {e.start}; convert the file to UTF-8")
                continue
            for line_no, raw in enumerate(f, start=1):
                where = f"{path}:{line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"{where}: not valid UTF-8 at byte {e.start} of the line; convert the file to UTF-8")
                if line.strip(" \t\r\n") == "":
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object")
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise InputError(f"{where}: expected an object with a string \"text\" field, "
                                     "e.g. {\"text\": \"...\", \"domain\": \"en\"}")
                domain = default_domain
                if "domain" in doc:
                    if not isinstance(doc["domain"], str):
                        raise InputError(f"{where}: \"domain\" must be a string")
                    domain = doc["domain"]
                    if not valid_domain(domain):
                        raise InputError(f"{where}: domain \"{domain}\" must be a non-empty name without spaces")
                try:
                    doc["text"].encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError(f"{where}: \"text\" holds an unpaired surrogate escape (\\ud800-\\udfff); "
                                     "write the character itself or a valid surrogate pair")
                yield doc["text"], domain


# ---- output: the shards moe-data encode writes (data/indexed_dataset.cpp, data/domains.cpp) ----

class ShardWriter:
    """Writes PREFIX.bin/.idx under .tmp names and renames them into place in finish(); abort() removes them."""

    def __init__(self, prefix, vocab_size):
        self.prefix = prefix
        self.vocab_size = vocab_size
        self.code, self.dtype = (UINT16_CODE, "<u2") if vocab_size < 65500 else (INT32_CODE, "<i4")
        self.lengths = []
        try:
            self.bin = open(prefix + ".bin.tmp", "wb")
        except OSError:
            raise InputError(f"{prefix}.bin: cannot create; check the output directory exists and is writable")

    def add_document(self, ids):
        a = np.asarray(ids, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
            bad = int(a.max()) if a.max() >= self.vocab_size else int(a.min())
            raise InputError(f"{self.prefix}: token id {bad} outside the vocabulary [0, {self.vocab_size}); "
                             "pass the tokenizer's vocabulary size")
        self.bin.write(a.astype(self.dtype).tobytes())
        self.lengths.append(int(a.size))

    def finish(self):
        self.bin.close()
        n = len(self.lengths)
        item = 2 if self.code == UINT16_CODE else 4
        lengths = np.asarray(self.lengths, dtype="<i4")
        pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * item)[:-1]]) if n else np.zeros(0)
        with open(self.prefix + ".idx.tmp", "wb") as idx:
            idx.write(MAGIC)
            idx.write(struct.pack("<QBQQ", 1, self.code, n, n + 1))
            idx.write(lengths.tobytes())
            idx.write(np.asarray(pointers, dtype="<i8").tobytes())
            idx.write(np.arange(n + 1, dtype="<i8").tobytes())
        os.replace(self.prefix + ".bin.tmp", self.prefix + ".bin")
        os.replace(self.prefix + ".idx.tmp", self.prefix + ".idx")

    def abort(self):
        self.bin.close()
        for suffix in (".bin.tmp", ".idx.tmp"):
            if os.path.exists(self.prefix + suffix):
                os.remove(self.prefix + suffix)


def write_domains(prefix, domains):
    with open(prefix + ".domains.tmp", "w", encoding="utf-8", newline="\n") as f:
        f.write("moetrain-domains 1\n")
        for d in domains:
            f.write(d + "\n")
    os.replace(prefix + ".domains.tmp", prefix + ".domains")


def write_shards(prefix, docs_ids, domains, vocab_size):
    """Shards of already tokenized documents (each list of ids ends with its end-of-document id)."""
    writer = ShardWriter(prefix, vocab_size)
    try:
        for ids in docs_ids:
            writer.add_document(ids)
    except BaseException:
        writer.abort()
        raise
    if os.path.exists(prefix + ".domains"):
        os.remove(prefix + ".domains")  # never leave an old sidecar next to new shards
    writer.finish()
    write_domains(prefix, domains)


# ---- the tokenizer ----

def load_tokenizer(directory):
    if not os.path.isdir(directory):
        raise InputError(f"--hf-tokenizer {directory}: no such directory; pass the model's Hugging Face directory "
                         "(the one holding tokenizer.json)")
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        has_sp = os.path.isfile(os.path.join(directory, "tokenizer.model"))
        raise InputError(f"{path} is missing: this tool reads a Hugging Face fast tokenizer (tokenizer.json, as Qwen2, "
                         "Qwen3 and OLMoE ship it); copy the model's tokenizer.json and tokenizer_config.json into "
                         f"{directory}" + ("; for its SentencePiece tokenizer.model use `moe-data encode --tokenizer "
                                           f"{directory}/tokenizer.model`" if has_sp else ""))
    import transformers
    transformers.logging.set_verbosity_error()  # no "sequence longer than the model" warnings: documents are not model inputs
    try:
        tok = transformers.AutoTokenizer.from_pretrained(directory, use_fast=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types; the message is what helps
        raise InputError(f"{directory}: transformers.AutoTokenizer cannot load it ({type(e).__name__}: {e}); "
                         "check tokenizer.json and tokenizer_config.json are the model's own")
    if not getattr(tok, "is_fast", False):
        raise InputError(f"{directory}: AutoTokenizer gave a slow tokenizer ({type(tok).__name__}); "
                         "tokenizer.json must be a Hugging Face fast tokenizer file")
    return tok


def end_of_document(tok, directory, eod_token):
    token = eod_token if eod_token is not None else tok.eos_token
    if token is None:
        raise InputError(f"{directory}: the tokenizer has no eos_token; pass --eod-token TOKEN "
                         "(the token that ends each document, e.g. <|endoftext|>)")
    vocab = tok.get_vocab()  # base vocabulary and added tokens
    if token not in vocab:
        raise InputError(f"--eod-token {token}: not a token of {directory}; pass one of its special tokens, "
                         f"e.g. {', '.join(list(tok.all_special_tokens)[:4]) or '<|endoftext|>'}")
    return token, int(vocab[token])


def encode(args):
    tok = load_tokenizer(args.hf_tokenizer)
    eod_token, eod_id = end_of_document(tok, args.hf_tokenizer, args.eod_token)
    vocab_size = len(tok)  # base vocabulary plus added tokens: every id the tokenizer can produce is below it
    per_domain = {}
    domains = []
    writer = ShardWriter(args.output_prefix, vocab_size)

    def flush(texts, batch_domains):
        if not texts:
            return
        for ids, domain in zip(tok(texts, add_special_tokens=True)["input_ids"], batch_domains):
            ids = list(ids) + [eod_id]
            writer.add_document(ids)
            domains.append(domain)
            docs, tokens = per_domain.get(domain, (0, 0))
            per_domain[domain] = (docs + 1, tokens + len(ids))

    try:
        texts, batch_domains = [], []
        for text, domain in documents(args.input, args.domain):
            texts.append(text)
            batch_domains.append(domain)
            if len(texts) == BATCH_DOCUMENTS:
                flush(texts, batch_domains)
                texts, batch_domains = [], []
        flush(texts, batch_domains)
    except BaseException:
        writer.abort()
        raise
    if os.path.exists(args.output_prefix + ".domains"):
        os.remove(args.output_prefix + ".domains")  # never leave an old sidecar next to new shards
    writer.finish()
    write_domains(args.output_prefix, domains)
    print(json.dumps({"prefix": args.output_prefix, "documents": len(domains),
                      "tokens": sum(t for _, t in per_domain.values()),
                      "domains": {d: {"documents": c[0], "tokens": c[1]} for d, c in sorted(per_domain.items())},
                      "tokenizer": args.hf_tokenizer, "vocab_size": vocab_size,
                      "eod": {"token": eod_token, "id": eod_id}}, ensure_ascii=False))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="encode_hf", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-tokenizer", required=True, metavar="DIR",
                        help="Hugging Face model or tokenizer directory holding tokenizer.json")
    parser.add_argument("--input", required=True, action="append", metavar="FILE",
                        help="*.jsonl ({\"text\", \"domain\"} per line) or a plain-text document; repeatable")
    parser.add_argument("--output-prefix", required=True, metavar="PREFIX", help="writes PREFIX.bin, .idx, .domains")
    parser.add_argument("--domain", default="all", metavar="NAME", help="domain of documents that name none (default all)")
    parser.add_argument("--eod-token", default=None, metavar="TOKEN",
                        help="token appended to every document (default: the tokenizer's eos_token)")
    args = parser.parse_args(argv)
    if not valid_domain(args.domain):
        parser.error(f"--domain \"{args.domain}\" must be a non-empty name without spaces")
    try:
        encode(args)
    except InputError as e:
        print(f"encode_hf: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
