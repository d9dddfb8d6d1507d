#!/usr/bin/env python3
"""Fails on a C++ function body longer than the limit (default 80 lines) unless a comment within the
three lines above its first line says why it must be long ("long because ..."). Counts from the line of
the opening brace to the closing one; lambdas count as part of their function. Comments and string
literals are skipped; the scan is a brace counter, not a parser, which the code's style keeps accurate.

usage: function-length-check.py [--limit N] [--report N] [FILE...]   (default: the C++ files outside tests/)
  --report N   also list every function of N lines or more (the longest first) and exit 0"""
import argparse
import os
import re
import subprocess
import sys

SCOPE = re.compile(r'\b(namespace|class|struct|enum|union)\b[^()]*$')


def strip(src):
    """src with comments and string/char literals blanked, newlines kept (line numbers stay right)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith('//', i):
            j = src.find('\n', i)
            i = n if j < 0 else j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append('\n' * src.count('\n', i, j))
            i = j
        elif src.startswith('R"', i) and re.match(r'R"([^(]*)\(', src[i:]):
            delim = re.match(r'R"([^(]*)\(', src[i:]).group(1)
            j = src.find(')' + delim + '"', i) + len(delim) + 2
            out.append('""' + '\n' * src.count('\n', i, j))
            i = j
        elif src[i] in '"\'':
            q, j = src[i], i + 1
            while j < n and src[j] != q:
                j += 2 if src[j] == '\\' else 1
            out.append(q + q)
            i = j + 1
        else:
            out.append(src[i])
            i += 1
    return ''.join(out)


def functions(path):
    """(lines, first line, signature) of every function body at namespace or class scope."""
    text = strip(open(path, encoding='utf-8').read())
    stack, line, last, found = [], 1, 0, []
    for idx, ch in enumerate(text):
        if ch == '\n':
            line += 1
        elif ch == '{':
            head = text[last:idx].strip()
            kind = 'block'
            if all(k == 'scope' for k, _, _ in stack):
                if head.endswith('='):
                    kind = 'init'
                elif SCOPE.search(head) or head.endswith('extern ""'):
                    kind = 'scope'
                elif ')' in head:
                    kind = 'function'
                else:
                    kind = 'scope'
            stack.append((kind, line, re.sub(r'\s+', ' ', head)[-100:]))
            last = idx + 1
        elif ch == '}':
            if stack:
                kind, first, head = stack.pop()
                if kind == 'function':
                    found.append((line - first + 1, first, head))
            last = idx + 1
        elif ch == ';':
            last = idx + 1
    return found


def explained(lines, first):
    above = ' '.join(lines[max(0, first - 4):first]).lower()
    return 'long because' in above


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--limit', type=int, default=80)
    ap.add_argument('--report', type=int)
    ap.add_argument('files', nargs='*')
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    files = args.files or [f for f in subprocess.run(['bash', '-c', 'source launch/cxx_files.sh; printf "%s\\n" "${files[@]}"'],
                                                     capture_output=True, text=True, check=True).stdout.split()
                           if not f.startswith('tests/')]
    every, too_long = [], []
    for path in files:
        lines = open(path, encoding='utf-8').read().split('\n')
        for length, first, head in functions(path):
            every.append((length, path, first, head))
            if length > args.limit and not explained(lines, first):
                too_long.append((length, path, first, head))
    if args.report is not None:
        for length, path, first, head in sorted(every, reverse=True):
            if length >= args.report:
                print(f'{length:4d}  {path}:{first}  {head}')
        return 0
    if too_long:
        for length, path, first, head in sorted(too_long, reverse=True):
            print(f'function-length-check: {path}:{first}: {length} lines (limit {args.limit}): {head}', file=sys.stderr)
        print('function-length-check: split it into named steps, or say above it why it must be long '
              '("// long because ...")', file=sys.stderr)
        return 1
    print(f'function-length-check: {len(every)} functions in {len(files)} files, none over {args.limit} lines')
    return 0


if __name__ == '__main__':
    sys.exit(main())
