#!/usr/bin/env python3
"""Assemble a multi-domain text corpus, as JSONL with a "domain" field, from files that launch/setup.sh
installs and whose content is the same on every machine.

Domains: en (fortunes, fortunes-min), de / it / es / ru (fortunes-de/-it/-es/-ru), c (the C and C++ headers
of the pinned torch wheel, TORCH/include), python (the Python source of the same wheel, TORCH/**/*.py).
Nothing is read from the rest of the system: /usr/include and the system Python's standard library depend
on which -dev packages and which Python happen to be installed, and on Debian point releases, so a corpus
made from them differs between machines. The fortune packages are unchanged since Debian 12's release, and
the torch wheel is pinned in launch/requirements.txt (its headers and .py files are the same for every
Python version and platform of one release).

Fortunes are split into one document per entry (entries end at a line holding only '%'); source files are
one document each, in sorted path order (directories named test, tests, testing, _vendor and __pycache__
are skipped). Documents whose SHA-256 (of the text) is 0 mod 20 go to the validation split; in a domain
where none does, the document with the smallest hash is held out, so every domain has at least one
validation and one training document (a domain with fewer than 2 documents is an error).

Also writes OUT_DIR/sources.json: the version of every package the text came from.

usage: assemble_corpus.py OUT_DIR --torch TORCH_PACKAGE_DIR [--small]
"""
import glob
import hashlib
import json
import os
import subprocess
import sys

SKIPPED_DIRS = ("test", "tests", "testing", "_vendor", "__pycache__")

FORTUNE_PACKAGES = {"en": ["fortunes", "fortunes-min"], "de": ["fortunes-de"], "it": ["fortunes-it"],
                    "es": ["fortunes-es"], "ru": ["fortunes-ru"]}


class CorpusError(Exception):
    pass


def package_version(package):
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


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


def source_files(root, suffixes, cap_bytes, max_file_bytes=60_000, skip_top=()):
    total = 0
    # Top-down walk, pruned and sorted in place: the exclusions take effect and the order is deterministic.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not (dirpath == root and d in skip_top))
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


def torch_version(torch_dir):
    """The wheel's version, read from torch/version.py without importing torch."""
    try:
        for line in open(os.path.join(torch_dir, "version.py")):
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def main():
    args = sys.argv[1:]
    if not args or "--torch" not in args or args.index("--torch") + 1 >= len(args):
        sys.exit(__doc__)
    torch_dir = args[args.index("--torch") + 1]
    out_dir, small = args[0], "--small" in args
    if not os.path.isfile(os.path.join(torch_dir, "__init__.py")) or not os.path.isdir(os.path.join(torch_dir, "include")):
        sys.exit(f"assemble_corpus: --torch {torch_dir} is not the torch package of a wheel (no __init__.py and "
                 "include/ there); pass the directory of the venv's torch that launch/setup.sh made")
    cap = 250_000 if small else 4_000_000
    include = os.path.join(torch_dir, "include")
    # domain -> (documents, what to check when a domain comes out empty)
    sources = {d: (lambda d=d: fortunes(d, cap), f"the fortune files of Debian package(s) {', '.join(FORTUNE_PACKAGES[d])}")
               for d in FORTUNE_PACKAGES}
    sources["c"] = (lambda: source_files(include, (".h", ".hpp", ".cuh"), cap),
                    f"C/C++ headers of 200 bytes to 60 kB under {include}")
    sources["python"] = (lambda: source_files(torch_dir, (".py",), cap, skip_top=("include",)),
                         f"Python files of 200 bytes to 60 kB under {torch_dir}")
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
    versions = {p: package_version(p) for ps in FORTUNE_PACKAGES.values() for p in ps}
    versions["torch (PyPI wheel)"] = torch_version(torch_dir)
    with open(os.path.join(out_dir, "sources.json"), "w") as f:
        json.dump({"packages": versions, "domains": stats}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps({"corpus": out_dir, "domains": stats}))


if __name__ == "__main__":
    main()
