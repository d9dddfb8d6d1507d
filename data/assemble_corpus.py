#!/usr/bin/env python3
"""Assemble a multi-domain text corpus from Debian packages, as JSONL with a "domain" field.

Domains: en (fortunes, fortunes-min), de / it / es / ru (fortunes-de/-it/-es/-ru), c (C and C++ headers
under /usr/include), python (the Python standard library). Fortunes are split into one document per
entry (entries end at a line holding only '%'); source files are one document each. Every 20th
document of each domain (by a stable hash of its text) goes to the validation split.

usage: assemble_corpus.py OUT_DIR [--small]
"""
import hashlib
import json
import os
import subprocess
import sys

FORTUNE_PACKAGES = {"en": ["fortunes", "fortunes-min"], "de": ["fortunes-de"], "it": ["fortunes-it"],
                    "es": ["fortunes-es"], "ru": ["fortunes-ru"]}


def package_files(package):
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    files = []
    for path in out.splitlines():
        if "/fortunes" not in path or path.endswith((".dat", ".u8")) or "/doc/" in path:
            continue
        if os.path.isfile(path) and not os.path.islink(path):
            files.append(path)
    return sorted(files)


def read_text(path):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def fortunes(domain, cap_bytes):
    total = 0
    for package in FORTUNE_PACKAGES[domain]:
        for path in package_files(package):
            for entry in read_text(path).split("\n%\n"):
                entry = entry.strip("\n%")
                if len(entry) < 20:
                    continue
                total += len(entry.encode())
                if total > cap_bytes:
                    return
                yield entry


def source_files(root, suffixes, cap_bytes, max_file_bytes=60_000, recursive=True):
    total = 0
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        dirnames[:] = [d for d in dirnames if d not in ("test", "tests", "idlelib", "site-packages", "__pycache__")]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not name.endswith(suffixes) or os.path.islink(path):
                continue
            size = os.path.getsize(path)
            if size < 200 or size > max_file_bytes:
                continue
            text = read_text(path)
            total += size
            if total > cap_bytes:
                return
            yield text


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir, small = sys.argv[1], "--small" in sys.argv[2:]
    cap = 250_000 if small else 4_000_000
    sources = {d: fortunes(d, cap) for d in FORTUNE_PACKAGES}
    sources["c"] = source_files("/usr/include", (".h", ".hpp"), cap)
    sources["python"] = source_files("/usr/lib/python3.11", (".py",), cap)
    os.makedirs(out_dir, exist_ok=True)
    stats = {}
    with open(os.path.join(out_dir, "train.jsonl"), "w") as train, open(os.path.join(out_dir, "valid.jsonl"), "w") as valid:
        for domain, docs in sources.items():
            n_train = n_valid = 0
            for text in docs:
                held_out = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 20 == 0
                (valid if held_out else train).write(json.dumps({"text": text, "domain": domain}, ensure_ascii=False) + "\n")
                n_valid += held_out
                n_train += not held_out
            if n_train == 0 or n_valid == 0:
                sys.exit(f"assemble_corpus: domain {domain} has {n_train} training and {n_valid} validation documents; "
                         "is its Debian package installed? (launch/setup.sh installs them)")
            stats[domain] = {"train_documents": n_train, "valid_documents": n_valid}
    print(json.dumps({"corpus": out_dir, "domains": stats}))


if __name__ == "__main__":
    main()
