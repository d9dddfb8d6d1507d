"""data/tools/encode_hf.py: token shards with a Hugging Face tokenizer.json (docs/data.md).

Nothing can be downloaded, so the test builds two byte-level BPE tokenizers with the `tokenizers` library,
configured as released MoE models ship theirs (Qwen2/Qwen3: NFC, Qwen2's split regex, byte level;
OLMoE: GPT-NeoX's byte level with its regex), trained on the test corpus, saved with a tokenizer_config.json
naming the transformers class. Then:
1. every document of the shards equals transformers.AutoTokenizer.from_pretrained(dir)(text)["input_ids"]
   plus the end-of-document id, on multilingual text (prose, C, Python, Cyrillic, Greek, CJK, Arabic,
   Devanagari, Thai, emoji sequences, whitespace runs, combining marks, a literal special token) and on
   real corpus documents of every domain; and the byte-level encoding loses nothing (decode gives the
   NFC text back);
2. the Python shard writer writes the same bytes as moe-data's C++ writer for the same ids, and int32
   shards read back through moe-data stats;
3. the shards train with moe-train (loss falls over 20 steps), and a model.vocab_size below the
   tokenizer's is refused naming the shards and the size to set;
4. bad input (missing tokenizer.json, a malformed JSONL line, an unknown --eod-token) is a clear error
   naming the file or line and the fix, and leaves no shard behind.
"""
import json
import os
import subprocess
import sys
import unicodedata

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bpe_tokenizers import build_bpe_tokenizer  # noqa: E402
from common import BIN, CORPUS, SOURCE, TINY, check, fresh_dir, metrics  # noqa: E402

PYTHON = sys.executable
TOOL = os.path.join(SOURCE, "data/tools/encode_hf.py")
sys.path.insert(0, os.path.dirname(TOOL))
import encode_hf  # noqa: E402

MULTILINGUAL = [
    ("en", "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock; we'll see—don't we?\n"),
    ("c", "#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; ++i)\n"
          "\t\tprintf(\"%s\\n\", argv[i]);\n    return 0;   \n}\n"),
    ("python", "def f(x: int) -> int:\n    \"\"\"Square.\"\"\"\n    return x ** 2  # ok\n\n\nclass A:\n\tpass\r\n"),
    ("ru", "Съешь же ещё этих мягких французских булок, да выпей чаю.\n"),
    ("el", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία."),
    ("zh", "我能吞下玻璃而不伤身体。日本語のテキストも、한국어 텍스트도。"),
    ("ar", "أنا قادر على أكل الزجاج و هذا لا يؤلمني."),
    ("hi", "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती."),
    ("th", "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ"),
    ("emoji", "🙂👍🏽 👨‍👩‍👧‍👦 🇩🇪🇯🇵 ✈️ ❤️‍🔥 🧑🏿‍💻"),
    ("ws", "  leading\t\ttabs   and    runs \u00a0nbsp\u3000ideographic\r\n\r\n\n\n   trailing   \n\t"),
    ("mixed", "e\u0301 cafe\u0301 Ａｂｃ１２３ ﬁ ① x²  <|endoftext|> after the special token"),
    ("empty", ""),
]


def build_tokenizers(root, texts):
    """Two byte-level BPE tokenizer directories (vocabulary 1000) trained on `texts`; returns {name: dir}."""
    made = {name: build_bpe_tokenizer(os.path.join(root, name), name, texts) for name in ("qwen2", "olmoe")}
    # transformers 5 builds Qwen2Tokenizer's pipeline from its class (NFC included), not from tokenizer.json:
    # a tokenizer.json without the normalizer still encodes with NFC under AutoTokenizer, while the bare
    # `tokenizers` library would not. The tool must follow AutoTokenizer.
    d = os.path.join(root, "qwen2_without_normalizer")
    os.makedirs(d)
    with open(os.path.join(made["qwen2"], "tokenizer.json")) as f:
        spec = json.load(f)
    spec["normalizer"] = None
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(made["qwen2"], "tokenizer_config.json")) as src, open(os.path.join(d, "tokenizer_config.json"), "w") as dst:
        dst.write(src.read())
    made["qwen2_without_normalizer"] = d
    return made


def read_shards(prefix):
    """Documents (lists of ids) and domains of MMIDIDX v1 shards, read independently of both writers."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    check(idx[:9] == b"MMIDIDX\x00\x00", f"{prefix}.idx magic")
    code = idx[17]
    n, docs = np.frombuffer(idx[18:34], dtype="<u8")
    lengths = np.frombuffer(idx[34:34 + 4 * n], dtype="<i4")
    check(docs == n + 1, "one sequence per document")
    tokens = np.fromfile(prefix + ".bin", dtype={8: "<u2", 4: "<i4"}[code])
    ends = np.cumsum(lengths)
    out = [tokens[e - l:e].tolist() for e, l in zip(ends, lengths)]
    with open(prefix + ".domains") as f:
        lines = f.read().splitlines()
    check(lines[0] == "moetrain-domains 1", "sidecar header")
    return out, lines[1:]


def run_tool(*args):
    return subprocess.run([PYTHON, TOOL, *args], capture_output=True, text=True)


def corpus_documents(name, every):
    with open(os.path.join(CORPUS, name)) as f:
        lines = f.read().splitlines()
    return [json.loads(line) for line in lines[::every]]


def main():
    import transformers
    from transformers import AutoTokenizer
    transformers.logging.set_verbosity_error()
    work = fresh_dir("hf_tokenizer_encode")
    os.makedirs(work)
    train_docs = corpus_documents("train.jsonl", 3)
    dirs = build_tokenizers(work, [d["text"] for d in train_docs] + [t for _, t in MULTILINGUAL])

    # 1. ids equal AutoTokenizer's, document by document.
    valid_docs = corpus_documents("valid.jsonl", 1)
    jsonl = os.path.join(work, "mixed.jsonl")
    with open(jsonl, "w") as f:
        for domain, text in MULTILINGUAL:
            f.write(json.dumps({"text": text, "domain": domain}, ensure_ascii=False) + "\n")
        f.write("\n   \n")  # blank lines are skipped
        for d in valid_docs:
            f.write(json.dumps(d) + "\n")
    plain = os.path.join(work, "plain.txt")
    with open(plain, "w", encoding="utf-8", newline="") as f:
        f.write("".join(t for _, t in MULTILINGUAL))
    expected_texts = [t for _, t in MULTILINGUAL] + [d["text"] for d in valid_docs] + ["".join(t for _, t in MULTILINGUAL)]
    expected_domains = [d for d, _ in MULTILINGUAL] + [d["domain"] for d in valid_docs] + ["plain"]
    check(len({d["domain"] for d in valid_docs}) >= 7, "corpus documents of every domain")
    for name, d in dirs.items():
        prefix = os.path.join(work, f"{name}_mixed")
        proc = run_tool("--hf-tokenizer", d, "--input", jsonl, "--input", plain, "--output-prefix", prefix,
                        "--domain", "plain")
        check(proc.returncode == 0, f"encode_hf {name} failed:\n{proc.stderr}")
        summary = json.loads(proc.stdout)
        auto = AutoTokenizer.from_pretrained(d)
        eod = auto.convert_tokens_to_ids("<|endoftext|>")
        check(summary["eod"] == {"token": "<|endoftext|>", "id": eod}, f"{name}: eod from eos_token: {summary['eod']}")
        check(summary["vocab_size"] == len(auto), f"{name}: vocabulary size {summary['vocab_size']} vs {len(auto)}")
        docs, domains = read_shards(prefix)
        check(domains == expected_domains, f"{name}: domains {domains[:5]}...")
        check(len(docs) == len(expected_texts), f"{name}: {len(docs)} documents, expected {len(expected_texts)}")
        mismatched = [i for i, text in enumerate(expected_texts) if docs[i] != auto(text)["input_ids"] + [eod]]
        check(not mismatched, f"{name}: documents {mismatched[:10]} differ from AutoTokenizer's ids, e.g. "
                              f"{expected_texts[mismatched[0]][:60]!r}" if mismatched else "")
        lossy = [i for i, text in enumerate(expected_texts)
                 if auto.decode(docs[i][:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                 != unicodedata.normalize("NFC", text)]
        check(not lossy, f"{name}: documents {lossy[:10]} do not decode to their text")
        special = docs[expected_domains.index("mixed")]
        check(special.count(eod) == 2, f"{name}: the literal special token is one id, as AutoTokenizer makes it")
        print(f"{name}: {len(docs)} documents, {sum(map(len, docs))} tokens, equal to AutoTokenizer's "
              f"({type(auto).__name__}, vocabulary {len(auto)})")

    # 2. The Python writer writes what the C++ writer writes.
    sp_prefix = os.path.join(work, "sp")
    proc = subprocess.run([os.path.join(BIN, "moe-data"), "encode", "--tokenizer", os.path.join(CORPUS, "tokenizer.model"),
                           "--input", jsonl, "--output-prefix", sp_prefix], capture_output=True, text=True)
    check(proc.returncode == 0, f"moe-data encode failed: {proc.stderr}")
    sp_docs, sp_domains = read_shards(sp_prefix)
    encode_hf.write_shards(sp_prefix + "_py", sp_docs, sp_domains, 512)
    for ext in (".bin", ".idx", ".domains"):
        with open(sp_prefix + ext, "rb") as a, open(sp_prefix + "_py" + ext, "rb") as b:
            check(a.read() == b.read(), f"{ext} written by encode_hf differs from moe-data's")
    encode_hf.write_shards(sp_prefix + "_i32", sp_docs, sp_domains, 70000)
    stats = subprocess.run([os.path.join(BIN, "moe-data"), "stats", "--prefix", sp_prefix + "_i32"], capture_output=True, text=True)
    check(stats.returncode == 0, f"moe-data stats on int32 shards: {stats.stderr}")
    stats = json.loads(stats.stdout)
    check(stats["dtype_code"] == 4 and stats["tokens"] == sum(map(len, sp_docs)), f"int32 shards read back: {stats}")
    print("writer: byte-identical to moe-data encode (uint16); int32 shards read by moe-data stats")

    # 3. The shards train; a vocabulary larger than model.vocab_size is refused.
    qwen = dirs["qwen2"]
    train_jsonl = os.path.join(work, "train.jsonl")
    with open(train_jsonl, "w") as f:
        for d in train_docs[:1500]:
            f.write(json.dumps(d) + "\n")
    for split, path in (("train", train_jsonl), ("valid", jsonl)):
        proc = run_tool("--hf-tokenizer", qwen, "--input", path, "--output-prefix", os.path.join(work, split))
        check(proc.returncode == 0, f"encode_hf {split}: {proc.stderr}")
    base = [os.path.join(BIN, "moe-train"), "--recipe", TINY, "--set", f"data.train_prefix={work}/train",
            "--set", f"data.valid_prefix={work}/valid", "--set", "data.tokenizer=", "--set", "train.steps=20",
            "--set", "schedule.warmup_steps=5", "--set", "train.eval_interval=0", "--set", "checkpoint.interval=0",
            "--set", "checkpoint.save_final=false", "--set", "logging.log_interval=1"]
    run_dir = os.path.join(work, "run")
    proc = subprocess.run(base + ["--run-dir", run_dir, "--set", "model.vocab_size=1024"], capture_output=True, text=True)
    check(proc.returncode == 0, f"moe-train on encode_hf shards failed:\n{proc.stdout}\n{proc.stderr}")
    losses = [m["loss"] for m in metrics(run_dir) if "loss" in m]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    check(len(losses) == 20 and last < first - 0.5, f"loss falls on encode_hf shards: {first:.3f} -> {last:.3f}")
    print(f"moe-train: 20 steps, loss {first:.3f} -> {last:.3f}")
    small_run = os.path.join(work, "run_small_vocab")
    proc = subprocess.run(base + ["--run-dir", small_run, "--set", "model.vocab_size=512"], capture_output=True, text=True)
    check(proc.returncode != 0 and "does not fit model.vocab_size = 512" in proc.stderr
          and "set model.vocab_size to at least" in proc.stderr and f"{work}/train" in proc.stderr,
          f"vocabulary larger than model.vocab_size is refused naming the fix:\n{proc.stderr}")
    check(not os.path.exists(small_run), "a refused run leaves no run directory")

    # 4. Bad input: clear errors, nothing left behind.
    no_json = os.path.join(work, "no_tokenizer_json")
    os.makedirs(no_json)
    proc = run_tool("--hf-tokenizer", no_json, "--input", jsonl, "--output-prefix", os.path.join(work, "x"))
    check(proc.returncode == 1 and f"{no_json}/tokenizer.json is missing" in proc.stderr and "copy the model's tokenizer.json" in proc.stderr,
          f"missing tokenizer.json: {proc.stderr}")
    bad = os.path.join(work, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"text": "fine"}\n\n{"text": "broken\n{"text": "never read"}\n')
    out = os.path.join(work, "bad_out")
    proc = run_tool("--hf-tokenizer", qwen, "--input", bad, "--output-prefix", out)
    check(proc.returncode == 1 and f"{bad}:3: not valid JSON" in proc.stderr and "each line must be one JSON object" in proc.stderr,
          f"malformed line named with its number: {proc.stderr}")
    left = [p for p in os.listdir(work) if p.startswith("bad_out")]
    check(not left, f"no shard left after an error: {left}")
    with open(bad, "w") as f:
        f.write('{"text": "fine"}\n{"txt": "no text field"}\n')
    proc = run_tool("--hf-tokenizer", qwen, "--input", bad, "--output-prefix", out)
    check(proc.returncode == 1 and f"{bad}:2: expected an object with a string \"text\" field" in proc.stderr, f"no text: {proc.stderr}")
    proc = run_tool("--hf-tokenizer", qwen, "--input", jsonl, "--output-prefix", out, "--eod-token", "<|nope|>")
    check(proc.returncode == 1 and "--eod-token <|nope|>: not a token of" in proc.stderr, f"unknown eod: {proc.stderr}")
    proc = run_tool("--hf-tokenizer", qwen, "--input", jsonl, "--output-prefix", out, "--eod-token", "<|im_end|>")
    check(proc.returncode == 0 and json.loads(proc.stdout)["eod"]["token"] == "<|im_end|>", "--eod-token chooses the end id")
    check(read_shards(out)[0][0][-1] == AutoTokenizer.from_pretrained(qwen).convert_tokens_to_ids("<|im_end|>"), "--eod-token appended")
    print("errors: missing tokenizer.json, malformed line, missing text, unknown --eod-token")
    print("PASS")


if __name__ == "__main__":
    main()
