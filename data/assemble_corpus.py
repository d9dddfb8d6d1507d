#!/usr/bin/env python3
"""Assemble a multi-domain text corpus from Debian packages, as JSONL with a "domain" field.

Domains: en (fortunes, fortunes-min), de / it / es / ru (fortunes-de/-it/-es/-ru), c (C and C++ headers
under /usr/include), python (the Python standard library). Fortunes are split into one document per
entry (entries end at a line holding only '%'); source files are one document each (directories named
test, tests, idlelib, site-packages, dist-packages and __pycache__ are skipped). Documents whose SHA-256
(of the text) is 0 mod 20 go to the validation split; in a domain where none does, the document with the
smallest hash is held out, so every domain has at least one validation and one training document (a
domain with fewer than 2 documents is an error).

usage: assemble_corpus.py OUT_DIR [--small]
"""
import glob
import hashlib
import json
import os
import subprocess
import sys

SKIPPED_DIRS = ("test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__")

FORTUNE_PACKAGES = {"en": ["fortunes", "fortunes-min"], "de": ["fortunes-de"], "it": ["fortunes-it"],
                    "es": ["fortunes-es"], "ru": ["fortunes-ru"]}


class CorpusError(Exception):
    pass


def python_stdlib():
    """The standard library of the system Python (/usr/bin/python3), whichever version it is."""
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        if os.path.isfile(os.path.join(out, "os.py")):
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted((p for p in glob.glob("/usr/lib/python3.*") if os.path.isfile(os.path.join(p, "os.py"))),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in p.rsplit("python", 1)[1].split(".")])
    return found[-1] if found else None


def package_files(package):
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CorpusError(f"Debian package {package} is not installed (dpkg -L {package}: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode}); "
                          "launch/setup.sh installs it")
    out = proc.stdout
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
    # Top-down walk, pruned and sorted in place: the exclusions take effect and the order is deterministic.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if recursive and d not in SKIPPED_DIRS)
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


def split(domain, docs):
    """(train, valid) lists of one domain's documents, each in corpus order. Validation: SHA-256 of the
    text = 0 mod 20; if that selects none, the document with the smallest hash; if it selects all, the
    one with the largest hash goes back to training."""
    assert len(docs) >= 2, domain
    hashes = [int(hashlib.sha256(text.encode()).hexdigest(), 16) for text in docs]
    held_out = [h % 20 == 0 for h in hashes]
    if not any(held_out):
        held_out[min(range(len(docs)), key=lambda i: (hashes[i], i))] = True
    if all(held_out):
        held_out[max(range(len(docs)), key=lambda i: (hashes[i], -i))] = False
    return ([t for t, v in zip(docs, held_out) if not v], [t for t, v in zip(docs, held_out) if v])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir, small = sys.argv[1], "--small" in sys.argv[2:]
    cap = 250_000 if small else 4_000_000
    stdlib = python_stdlib()
    # domain -> (documents, what to check when a domain comes out empty)
    sources = {d: (lambda d=d: fortunes(d, cap), f"the fortune files of Debian package(s) {', '.join(FORTUNE_PACKAGES[d])}")
               for d in FORTUNE_PACKAGES}
    sources["c"] = (lambda: source_files("/usr/include", (".h", ".hpp"), cap),
                    "C/C++ headers of 200 bytes to 60 kB under /usr/include (Debian package libc6-dev)")
    sources["python"] = (lambda: source_files(stdlib, (".py",), cap) if stdlib else iter(()),
                         f"Python files of 200 bytes to 60 kB in the standard library {stdlib}" if stdlib else
                         "the system Python's standard library, which was not found (/usr/bin/python3 does not "
                         "run and there is no /usr/lib/python3.*/os.py; install Debian package python3)")
    os.makedirs(out_dir, exist_ok=True)
    stats = {}
    try:
        with open(os.path.join(out_dir, "train.jsonl"), "w") as train, open(os.path.join(out_dir, "valid.jsonl"), "w") as valid:
            for domain, (docs, source) in sources.items():
                docs = list(docs())
                if len(docs) < 2:
                    raise CorpusError(f"domain {domain} has {len(docs)} document(s), at least 2 are needed (one for "
                                      f"training, one for validation); it is made of {source}")
                train_docs, valid_docs = split(domain, docs)
                for f, texts in ((train, train_docs), (valid, valid_docs)):
                    for text in texts:
                        f.write(json.dumps({"text": text, "domain": domain}, ensure_ascii=False) + "\n")
                stats[domain] = {"train_documents": len(train_docs), "valid_documents": len(valid_docs)}
    except CorpusError as e:
        sys.exit(f"assemble_corpus: {e}")
    print(json.dumps({"corpus": out_dir, "domains": stats}))


if __name__ == "__main__":
    main()
